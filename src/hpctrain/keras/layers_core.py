"""Shape and element-wise layers: Embedding, Reshape, Rescaling, Softmax, ReLU."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from hpctrain.arguments import is_number, is_whole_number
from hpctrain.errors import ConfigError, InputError
from hpctrain.keras import activations, initializers, regularizers
from hpctrain.keras.layers import Activation, Layer, weight_penalty


class Embedding(Layer):
    """Integer ids ``(batch, ...)`` -> vectors ``(batch, ..., output_dim)``; weight ``embeddings``."""

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform", embeddings_regularizer=None,
                 mask_zero=False, input_length=None, **kwargs):
        super().__init__(**kwargs)
        for argument, value in (("input_dim", input_dim), ("output_dim", output_dim)):
            if not is_whole_number(value) or value < 1:
                raise ConfigError(f"Embedding {argument} must be a whole number >= 1; got {value!r}.")
        if mask_zero:
            raise ConfigError("Embedding mask_zero=True is not supported yet (masks are not propagated); remove it.")
        self.input_dim, self.output_dim = int(input_dim), int(output_dim)
        self.embeddings_initializer = initializers.get(embeddings_initializer)
        self.embeddings_regularizer = regularizers.get(embeddings_regularizer)

    def build(self, input_shape):
        self.embeddings = self._new_weight((self.input_dim, self.output_dim), self.embeddings_initializer)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.output_dim)

    def forward(self, x):
        # fit keeps integer ids as int64; NumPy data called through model(x) arrives as float32.
        ids = x if x.dtype == torch.int64 else x.long()
        try:
            return F.embedding(ids, self.embeddings)
        except IndexError as error:  # checked only on failure: no extra pass or host sync per batch
            low, high = int(ids.min()), int(ids.max())
            raise InputError(f"{self.name}: the ids go from {low} to {high}, but Embedding(input_dim="
                             f"{self.input_dim}) takes ids 0..{self.input_dim - 1}. Raise input_dim to the "
                             "vocabulary size, or map the ids into that range.") from error

    def regularization_penalty(self):
        return weight_penalty((self.embeddings_regularizer, self.embeddings))

    def get_config(self):
        return {**super().get_config(), "input_dim": self.input_dim, "output_dim": self.output_dim,
                "embeddings_initializer": initializers.serialize(self.embeddings_initializer),
                "embeddings_regularizer": regularizers.serialize(self.embeddings_regularizer)}


class Reshape(Layer):
    """Each sample to ``target_shape`` (one entry may be -1); the batch axis is kept."""

    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        target = tuple(target_shape) if isinstance(target_shape, (tuple, list)) else None
        if target is None or not all(is_whole_number(n) and (n >= 1 or n == -1) for n in target) or \
                target.count(-1) > 1:
            raise ConfigError(f"Reshape target_shape must be a tuple of sizes >= 1 with at most one -1; "
                              f"got {target_shape!r}.")
        self.target_shape = tuple(int(n) for n in target)

    def compute_output_shape(self, input_shape):
        sample = input_shape[1:]
        if any(n is None for n in sample):
            return (input_shape[0], *(None if n == -1 else n for n in self.target_shape))
        size, known = math.prod(sample), math.prod(n for n in self.target_shape if n != -1)
        if (-1 in self.target_shape and size % known) or (-1 not in self.target_shape and size != known):
            raise InputError(f"Reshape {self.name} cannot make samples shaped {tuple(sample)} ({size} values) into "
                             f"{self.target_shape}.")
        return (input_shape[0], *(size // known if n == -1 else n for n in self.target_shape))

    def forward(self, x):
        return x.reshape(x.shape[0], *self.target_shape)

    def get_config(self):
        return {**super().get_config(), "target_shape": list(self.target_shape)}


def _check_numbers(layer: str, **arguments) -> None:
    for name, value in arguments.items():
        if not is_number(value):
            raise ConfigError(f"{layer} {name} must be a number; got {value!r}.")


class Rescaling(Layer):
    """``x * scale + offset``, e.g. ``Rescaling(1 / 255)`` on uint8 pixels (cast to float32 first)."""

    def __init__(self, scale, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        _check_numbers("Rescaling", scale=scale, offset=offset)
        self.scale, self.offset = float(scale), float(offset)

    def forward(self, x):
        if not x.is_floating_point():
            x = x.to(torch.float32)
        return x * self.scale + self.offset if self.offset else x * self.scale

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}


class Softmax(Activation):
    """Softmax over ``axis``; on the last axis it is folded into a cross-entropy loss like Dense(softmax)."""

    def __init__(self, axis=-1, **kwargs):
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ConfigError(f"Softmax axis must be one int; got {axis!r}.")
        super().__init__(activations.softmax if axis == -1 else functools.partial(activations.softmax, axis=axis), **kwargs)
        self.axis = axis

    def static_layers(self, include_activation=True):
        return super().static_layers(include_activation) if self.axis == -1 else None

    def get_config(self):
        return {**Layer.get_config(self), "axis": self.axis}


class ReLU(Activation):
    """Keras's ReLU layer: ``max_value``, ``negative_slope`` and ``threshold``; plain relu by default."""

    def __init__(self, max_value=None, negative_slope=0.0, threshold=0.0, **kwargs):
        _check_numbers("ReLU", negative_slope=negative_slope, threshold=threshold,
                       **({} if max_value is None else {"max_value": max_value}))
        if max_value is not None and float(max_value) < 0 or float(negative_slope) < 0 or float(threshold) < 0:
            raise ConfigError(f"ReLU max_value, negative_slope and threshold must be >= 0 (as in Keras); got "
                              f"{max_value!r}, {negative_slope!r} and {threshold!r}.")
        self.max_value = None if max_value is None else float(max_value)
        self.negative_slope, self.threshold = float(negative_slope), float(threshold)
        plain = self.max_value is None and not self.negative_slope and not self.threshold
        super().__init__(activations.relu if plain else self._relu, **kwargs)

    def _relu(self, x):
        y = torch.where(x >= self.threshold, x, self.negative_slope * (x - self.threshold))
        return y if self.max_value is None else y.clamp(max=self.max_value)

    def static_layers(self, include_activation=True):
        return super().static_layers(include_activation) if self.activation is activations.relu else None

    def get_config(self):
        return {**Layer.get_config(self), "max_value": self.max_value, "negative_slope": self.negative_slope,
                "threshold": self.threshold}
