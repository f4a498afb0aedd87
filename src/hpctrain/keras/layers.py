"""Keras layers as plain ``torch.nn.Module``s, with Keras's names, arguments and defaults.

Weights are stored as Keras stores them (a Dense kernel is ``(in, out)``), so ``get_weights``
needs no transposes and ``x @ kernel + bias`` is Keras's forward exactly.
"""

from __future__ import annotations

import collections
import math
import re

import numpy as np
import torch

from hpctrain.arguments import is_number, is_whole_number
from hpctrain.engine import static_step as static
from hpctrain.engine.dropout import dropout
from hpctrain.errors import ConfigError, InputError, warn
from hpctrain.keras import activations, initializers, regularizers

_name_counts: collections.Counter = collections.Counter()


def unique_name(base: str) -> str:
    """Keras's automatic names: dense, dense_1, dense_2, ..."""
    count = _name_counts[base]
    _name_counts[base] += 1
    return base if count == 0 else f"{base}_{count}"


def _snake_case(name: str) -> str:
    """Keras's own rule, so automatic names match: Conv2D -> conv2d, ReLU -> re_lu."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


class KerasTensor:
    """A symbolic tensor: the shape of one batch, with ``None`` for the batch dimension.

    ``node`` is the layer call that produced it (``None`` for a bare placeholder) and ``index`` its
    position among that call's outputs; the functional ``Model`` walks these links back to its inputs.
    """

    def __init__(self, shape: tuple, name: str | None = None, dtype: str = "float32", node=None, index: int = 0):
        self.shape = (None, *shape)
        self.name = name or unique_name("input_layer")
        self.dtype = dtype
        self.node = node
        self.index = index

    def __repr__(self) -> str:
        return f"<KerasTensor shape={self.shape}, name={self.name}>"


def Input(shape=None, batch_size=None, name=None, dtype="float32", **kwargs):  # noqa: N802 (Keras name)
    """A model input: the output of a new ``InputLayer``, to call layers on (the functional API)."""
    if shape is None:
        raise ConfigError("Input needs shape=, the shape of one sample, e.g. Input(shape=(784,)).")
    from hpctrain.keras.functional import input_tensor

    return input_tensor(InputLayer(shape=tuple(shape), name=name), dtype=dtype)


class Layer(torch.nn.Module):
    """Base layer: lazy ``build(input_shape)``, Keras's weight accessors, optional input shape."""

    def __init__(self, name=None, trainable=True, dtype=None, input_shape=None, input_dim=None,
                 batch_input_shape=None, **kwargs):
        super().__init__()
        if kwargs:
            raise ConfigError(
                f"{type(self).__name__} got unexpected argument(s): {', '.join(sorted(kwargs))}. "
                "Check the spelling against the Keras documentation of this layer."
            )
        self.name = name or unique_name(_snake_case(type(self).__name__))
        # Inference until fit trains it, as Keras's model(x) and layer(x) are: dropout off, batch
        # norm on its moving statistics (torch modules start in training mode).
        self.training = False
        self.built = False
        self._trainable = trainable
        self._statistics: set[str] = set()  # weights updated by forward, never by gradients
        self.declared_input_shape = _declared_input_shape(input_shape, input_dim, batch_input_shape)
        self.input_shape_built = None

    # --- calling ------------------------------------------------------------------------------

    def __call__(self, inputs, *args, training=None, mask=None, **kwargs):
        """On tensors: the forward (building the weights on the first call). On symbolic inputs
        (``Input``): records the call for a functional ``Model``. On NumPy data: inference,
        returning a NumPy array that also has ``.numpy()``, as Keras's eager tensors do."""
        if isinstance(inputs, torch.Tensor):  # every call inside a training step: checked first
            return self._call_on_tensors(inputs, training, *args, **kwargs)
        from hpctrain.keras import functional

        if functional.is_tensor_structure(inputs):
            return self._call_on_tensors(inputs, training, *args, **kwargs)
        if functional.is_symbolic(inputs):
            # training=... given in the graph is kept with the call, and applies whenever it runs.
            return functional.call_symbolic(self, inputs, kwargs if training is None else {**kwargs, "training": training})
        return functional.call_on_arrays(self, inputs, training=bool(training))

    def _call_on_tensors(self, inputs, training, *args, **kwargs):
        if not self.built:
            self._build_on(inputs)
        if training is None:  # the mode fit, evaluate and predict set
            return super().__call__(inputs, *args, **kwargs)
        return self._call_in_mode(bool(training), inputs, *args, **kwargs)

    def _call_in_mode(self, training: bool, *args, **kwargs):
        """One call in training or inference mode whatever the current mode (Keras's ``training=``
        argument: Monte-Carlo dropout in predict, a frozen batch norm in fit)."""
        was_training = self.training
        self.train(training)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            self.train(was_training)

    @property
    def output(self):
        """The symbolic output of this layer's first call on ``Input`` tensors (Keras's ``layer.output``)."""
        return self._first_node("output").outputs[0]

    @property
    def input(self):
        """The symbolic input of this layer's first call on ``Input`` tensors."""
        node = self._first_node("input")
        return node.outputs[0] if node.inputs is None else node.inputs

    def _first_node(self, what: str):
        nodes = self.__dict__.get("_inbound_nodes")
        if not nodes:
            raise ConfigError(f"layer {self.name} has no {what} yet: it has not been called on Input() tensors.")
        return nodes[0]

    def _build_on(self, inputs) -> None:
        """Builds the weights from the first real inputs (a tensor, or a list of them)."""
        from hpctrain.keras.functional import batch_shapes

        self.build(batch_shapes(inputs))

    # --- Keras surface ------------------------------------------------------------------------

    def build(self, input_shape: tuple) -> None:
        self.input_shape_built = tuple(input_shape)
        self.built = True

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return tuple(input_shape)

    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        """As in Keras, for this layer and every layer inside it: a frozen BatchNormalization also
        runs in inference mode, and moving statistics never become trainable."""
        self._trainable = bool(value)
        _set_trainable(self, self._trainable)

    @property
    def weights(self) -> list[torch.nn.Parameter]:
        return list(self.parameters())

    @property
    def trainable_weights(self):
        return [w for w in self.parameters() if w.requires_grad]

    @property
    def non_trainable_weights(self):
        return [w for w in self.parameters() if not w.requires_grad]

    def get_weights(self) -> list[np.ndarray]:
        return [w.detach().cpu().numpy().copy() for w in self.weights]

    def set_weights(self, weights) -> None:
        own = self.weights
        if len(weights) != len(own):
            raise InputError(f"layer {self.name} has {len(own)} weights; set_weights got {len(weights)} arrays.")
        with torch.no_grad():
            for param, value in zip(own, weights):
                value = torch.as_tensor(np.asarray(value), dtype=param.dtype)
                if tuple(value.shape) != tuple(param.shape):
                    raise InputError(
                        f"layer {self.name}: weight shaped {tuple(param.shape)} cannot take an array shaped "
                        f"{tuple(value.shape)}."
                    )
                param.copy_(value)

    def count_params(self) -> int:
        return sum(w.numel() for w in self.weights)

    def regularization_penalty(self):
        """The sum of this layer's weight penalties, or ``None`` when it has none."""
        return None

    def get_config(self) -> dict:
        config = {"name": self.name, "trainable": self.trainable}
        if self.declared_input_shape is not None:
            config["input_shape"] = list(self.declared_input_shape)
        return config

    @classmethod
    def from_config(cls, config: dict) -> "Layer":
        return cls(**config)

    def static_layers(self, include_activation: bool = True):
        """This layer as the engine's static primitives (``None``: it has none, use autograd)."""
        return None

    def _new_weight(self, shape, initializer) -> torch.nn.Parameter:
        return torch.nn.Parameter(initializer(tuple(shape)).to(torch.float32), requires_grad=self._trainable)

    def _new_statistic(self, name: str, shape, initializer) -> None:
        """A non-trainable weight (BatchNormalization's moving mean): saved and listed as Keras lists it."""
        self._statistics.add(name)
        setattr(self, name, torch.nn.Parameter(initializer(tuple(shape)).to(torch.float32), requires_grad=False))


def _declared_input_shape(input_shape, input_dim, batch_input_shape):
    if batch_input_shape is not None:
        return tuple(batch_input_shape[1:])
    if input_shape is not None:
        return tuple(input_shape) if isinstance(input_shape, (tuple, list)) else (input_shape,)
    if input_dim is not None:
        return (int(input_dim),)
    return None


class InputLayer(Layer):
    def __init__(self, input_shape=None, shape=None, name=None, **kwargs):
        super().__init__(name=name, input_shape=shape if shape is not None else input_shape, **kwargs)

    def static_layers(self, include_activation=True):
        return []

    def forward(self, x):
        return x


def _static_penalties(kernel_regularizer, bias_regularizer):
    """L1/L2 coefficients for the static executor, or ``None`` for a custom regularizer."""
    penalties = {}
    for regularizer, prefix in ((kernel_regularizer, ""), (bias_regularizer, "bias_")):
        if regularizer is None:
            continue
        if not isinstance(regularizer, regularizers.L1L2):
            return None
        penalties[prefix + "l1"], penalties[prefix + "l2"] = regularizer.l1, regularizer.l2
    return penalties


def weight_penalty(*pairs):
    """The sum of ``regularizer(weight)`` over the pairs that have both, or ``None``."""
    terms = [regularizer(weight) for regularizer, weight in pairs if regularizer is not None and weight is not None]
    return sum(terms[1:], terms[0]) if terms else None


def set_kernel_and_bias_options(layer, activation, use_bias, kernel_initializer, bias_initializer,
                                kernel_regularizer, bias_regularizer) -> None:
    """The options shared by layers with a kernel, a bias and an activation (Dense, Conv), resolved."""
    layer.activation = activations.get(activation)
    layer.use_bias = use_bias
    layer.kernel_initializer = initializers.get(kernel_initializer)
    layer.bias_initializer = initializers.get(bias_initializer)
    layer.kernel_regularizer = regularizers.get(kernel_regularizer)
    layer.bias_regularizer = regularizers.get(bias_regularizer)


def kernel_and_bias_config(layer) -> dict:
    """The config entries shared by layers with a kernel, a bias and an activation (Dense, Conv)."""
    return {"activation": activations.serialize(layer.activation), "use_bias": layer.use_bias,
            "kernel_initializer": initializers.serialize(layer.kernel_initializer),
            "bias_initializer": initializers.serialize(layer.bias_initializer),
            "kernel_regularizer": regularizers.serialize(layer.kernel_regularizer),
            "bias_regularizer": regularizers.serialize(layer.bias_regularizer)}


class Dense(Layer):
    """``activation(x @ kernel + bias)`` with kernel ``(in, units)``."""

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        if not is_whole_number(units) or units < 1:
            raise ConfigError(f"Dense units must be a whole number >= 1; got {units!r}.")
        self.units = int(units)
        set_kernel_and_bias_options(self, activation, use_bias, kernel_initializer, bias_initializer,
                                    kernel_regularizer, bias_regularizer)

    def build(self, input_shape):
        self.kernel = self._new_weight((input_shape[-1], self.units), self.kernel_initializer)
        self.bias = self._new_weight((self.units,), self.bias_initializer) if self.use_bias else None
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def pre_activation(self, x):
        if not x.is_floating_point():
            x = x.to(self.kernel.dtype)  # integer features, as Keras casts them to the layer's float32
        if self.bias is None:
            return x @ self.kernel
        if x.dim() == 2:
            return torch.addmm(self.bias, x, self.kernel)  # one fused GEMM + bias call
        return x @ self.kernel + self.bias

    def forward(self, x):
        return self.activation(self.pre_activation(x))

    def static_layers(self, include_activation=True):
        penalties = _static_penalties(self.kernel_regularizer, self.bias_regularizer)
        if penalties is None or not self.trainable:
            return None
        layers = [static.Linear(self.kernel, self.bias, transposed=False, **penalties)]
        if include_activation and self.activation is not activations.linear:
            layers.append(static.Activation(activations.serialize(self.activation)))
        return layers

    def regularization_penalty(self):
        return weight_penalty((self.kernel_regularizer, self.kernel), (self.bias_regularizer, self.bias))

    def get_config(self):
        return {**super().get_config(), "units": self.units, **kernel_and_bias_config(self)}


class Activation(Layer):
    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = activations.get(activation)

    def static_layers(self, include_activation=True):
        if not include_activation or self.activation is activations.linear:
            return []
        return [static.Activation(activations.serialize(self.activation))]

    def pre_activation(self, x):
        return x

    def forward(self, x):
        return self.activation(x)

    def get_config(self):
        return {**super().get_config(), "activation": activations.serialize(self.activation)}


def _set_trainable(module: torch.nn.Module, value: bool) -> None:
    """``requires_grad`` of the module's own parameters (statistics excepted); the layers inside
    it get ``trainable`` themselves, through containers and plain torch modules alike."""
    statistics = getattr(module, "_statistics", ())
    for name, param in module.named_parameters(recurse=False):
        param.requires_grad_(value and name not in statistics)
    for child in module.children():
        if isinstance(child, Layer):
            child.trainable = value
        else:
            _set_trainable(child, value)


class Dropout(Layer):
    """Inverted dropout in training (scale kept by ``1 / (1 - rate)``); identity in inference."""

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not is_number(rate) or not 0.0 <= float(rate) < 1.0:
            raise ConfigError(f"Dropout rate must be a number in [0, 1); got {rate!r}.")
        if noise_shape is not None:
            raise ConfigError("Dropout(noise_shape=...) is not supported yet (masks are drawn per value); remove it.")
        if seed is not None:
            warn(f"Dropout(seed={seed!r}) is not used: the masks come from the global generator, which "
                 "keras.utils.set_random_seed seeds.")
        self.rate = float(rate)

    def forward(self, x):
        return dropout(x, self.rate) if self.training else x

    def static_layers(self, include_activation=True):
        return [static.Dropout(self.rate)]

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


class Flatten(Layer):
    def compute_output_shape(self, input_shape):
        features = input_shape[1:]
        return (input_shape[0], None if None in features else math.prod(features))

    def forward(self, x):
        return x.flatten(1)


class _Merge(Layer):
    """A layer that takes a list of tensors (``Concatenate``, ``Add``)."""

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or not input_shape or not isinstance(input_shape[0], tuple) \
                or len(input_shape) < 2:
            raise ConfigError(f"{type(self).__name__} takes a list of at least two inputs; got shape(s) {input_shape}.")
        self._check_shapes([tuple(shape) for shape in input_shape])
        super().build(input_shape)

    def _check_shapes(self, shapes: list[tuple]) -> None:
        raise NotImplementedError


def _same_dims(a, b) -> bool:
    return a is None or b is None or a == b


class Concatenate(_Merge):
    """Joins a list of inputs along ``axis`` (the last by default); other dimensions must agree."""

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        if not is_whole_number(axis):
            raise ConfigError(f"Concatenate axis must be one int; got {axis!r}.")
        self.axis = int(axis)

    def _check_shapes(self, shapes):
        rank = len(shapes[0])
        if not -rank <= self.axis < rank:
            raise ConfigError(f"{self.name}: Concatenate(axis={self.axis}) is outside inputs of rank {rank} "
                              f"(shapes {', '.join(map(str, shapes))}); use an axis in {-rank}..{rank - 1}.")
        axis = self.axis % rank
        for shape in shapes[1:]:
            if len(shape) != rank or not all(_same_dims(a, b) for i, (a, b) in enumerate(zip(shapes[0], shape))
                                             if i != axis):
                raise ConfigError(f"{self.name}: Concatenate(axis={self.axis}) needs inputs whose shapes agree "
                                  f"except on that axis; got {', '.join(map(str, shapes))}.")

    def compute_output_shape(self, input_shape):
        shapes = [tuple(shape) for shape in input_shape]
        axis = self.axis % len(shapes[0])
        sizes = [shape[axis] for shape in shapes]
        joined = None if None in sizes else sum(sizes)
        return (*shapes[0][:axis], joined, *shapes[0][axis + 1:])

    def forward(self, inputs):
        return torch.cat(list(inputs), dim=self.axis)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


class Add(_Merge):
    """The element-wise sum of a list of inputs of one shape."""

    def _check_shapes(self, shapes):
        for shape in shapes[1:]:
            if len(shape) != len(shapes[0]) or not all(_same_dims(a, b) for a, b in zip(shapes[0], shape)):
                raise ConfigError(f"{self.name}: Add needs inputs of one shape; got {', '.join(map(str, shapes))}.")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def forward(self, inputs):
        total = inputs[0]
        for tensor in inputs[1:]:
            total = total + tensor
        return total


# The other layer families live in their own modules; they need Layer above, hence the late import.
from hpctrain.keras.layers_conv import (AveragePooling2D, Conv1D, Conv2D, GlobalAveragePooling2D,  # noqa: E402
                                        MaxPooling2D)
from hpctrain.keras.layers_core import Embedding, ReLU, Rescaling, Reshape, Softmax  # noqa: E402
from hpctrain.keras.layers_norm import BatchNormalization, LayerNormalization  # noqa: E402
from hpctrain.keras.layers_recurrent import GRU, LSTM  # noqa: E402

LAYERS = {cls.__name__: cls for cls in (
    InputLayer, Dense, Activation, Dropout, Flatten, Concatenate, Add,
    Conv1D, Conv2D, MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D,
    BatchNormalization, LayerNormalization, Embedding, Reshape, Rescaling, Softmax, ReLU, LSTM, GRU,
)}


def deserialize(entry: dict) -> Layer:
    """A layer from ``{"class_name": ..., "config": {...}}``, as ``get_config`` wrote it."""
    name = entry.get("class_name")
    if name not in LAYERS:
        raise InputError(f"unknown layer class {name!r} in the saved model; known: {', '.join(sorted(LAYERS))}.")
    return LAYERS[name].from_config(dict(entry.get("config", {})))
