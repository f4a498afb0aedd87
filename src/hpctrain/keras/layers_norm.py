"""Normalization layers with Keras's defaults (epsilon 1e-3, momentum 0.99) on PyTorch's kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hpctrain.arguments import is_number
from hpctrain.errors import ConfigError
from hpctrain.keras import initializers, regularizers
from hpctrain.keras.layers import Layer, weight_penalty


def _axis(value, layer: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{layer} axis must be one int (e.g. -1, the channels); got {value!r}.")
    return value


def _positive_axis(axis: int, input_shape, layer) -> int:
    rank = len(input_shape)
    if not -rank <= axis < rank or axis in (0, -rank):
        raise ConfigError(f"{type(layer).__name__} {layer.name}: axis {axis} is not a feature axis of inputs "
                          f"shaped {tuple(input_shape)}.")
    if input_shape[axis] is None:
        raise ConfigError(f"{type(layer).__name__} {layer.name}: axis {axis} of inputs shaped {tuple(input_shape)} "
                          "must have a known size.")
    return axis % rank


class _AffineNormalization(Layer):
    """gamma (scale) and beta (center) over one axis, with their initializers and regularizers."""

    def __init__(self, axis, epsilon, center, scale, beta_initializer, gamma_initializer, beta_regularizer,
                 gamma_regularizer, **kwargs):
        super().__init__(**kwargs)
        self.axis = _axis(axis, type(self).__name__)
        if not is_number(epsilon) or float(epsilon) <= 0:
            raise ConfigError(f"{type(self).__name__} epsilon must be a number > 0; got {epsilon!r}.")
        self.epsilon = float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)

    def build(self, input_shape):
        self.feature_axis = _positive_axis(self.axis, input_shape, self)
        features = (input_shape[self.feature_axis],)
        # Keras's weight order: gamma, then beta.
        self.gamma = self._new_weight(features, self.gamma_initializer) if self.scale else None
        self.beta = self._new_weight(features, self.beta_initializer) if self.center else None
        super().build(input_shape)

    def regularization_penalty(self):
        return weight_penalty((self.gamma_regularizer, self.gamma), (self.beta_regularizer, self.beta))

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon, "center": self.center,
                "scale": self.scale, "beta_initializer": initializers.serialize(self.beta_initializer),
                "gamma_initializer": initializers.serialize(self.gamma_initializer),
                "beta_regularizer": regularizers.serialize(self.beta_regularizer),
                "gamma_regularizer": regularizers.serialize(self.gamma_regularizer)}


class BatchNormalization(_AffineNormalization):
    """Keras's BatchNormalization: batch statistics in training, moving statistics in inference.

    Weights, in Keras's order: gamma, beta, moving_mean, moving_variance (the last two are
    non-trainable and updated as ``moving = moving * momentum + batch * (1 - momentum)`` with the
    batch's *biased* variance, as Keras updates them). A layer with ``trainable=False`` runs in
    inference mode, as in Keras.
    """

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True, beta_initializer="zeros",
                 gamma_initializer="ones", moving_mean_initializer="zeros", moving_variance_initializer="ones",
                 beta_regularizer=None, gamma_regularizer=None, **kwargs):
        super().__init__(axis, epsilon, center, scale, beta_initializer, gamma_initializer, beta_regularizer,
                         gamma_regularizer, **kwargs)
        if not is_number(momentum) or not 0.0 <= float(momentum) <= 1.0:
            raise ConfigError(f"BatchNormalization momentum must be a number in [0, 1]; got {momentum!r}.")
        self.momentum = float(momentum)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)

    def build(self, input_shape):
        super().build(input_shape)
        features = (input_shape[self.feature_axis],)
        self._new_statistic("moving_mean", features, self.moving_mean_initializer)
        self._new_statistic("moving_variance", features, self.moving_variance_initializer)

    def forward(self, x):
        # PyTorch's kernel wants the features on axis 1; for (batch, h, w, c) the moved view is an
        # NCHW tensor in channels-last memory, which the kernel reads without a copy.
        moved = x.movedim(self.feature_axis, 1)
        if self.training and self.trainable:
            self._update_moving_statistics(moved)
            if moved.numel() == moved.shape[1]:
                return self._normalize_single_values(moved).movedim(1, self.feature_axis)
            y = F.batch_norm(moved, None, None, self.gamma, self.beta, training=True, eps=self.epsilon)
        else:
            y = F.batch_norm(moved, self.moving_mean, self.moving_variance, self.gamma, self.beta, training=False,
                             eps=self.epsilon)
        return y.movedim(1, self.feature_axis)

    def _normalize_single_values(self, moved):
        """One value per feature (a last batch of one row): PyTorch's kernel refuses it; Keras
        normalizes it to zero, so the output is beta."""
        y = torch.zeros_like(moved) * moved  # keeps the graph: the gradient to x is zero, as in Keras
        shape = (1, -1, *([1] * (moved.dim() - 2)))
        y = y * self.gamma.reshape(shape) if self.gamma is not None else y
        return y + self.beta.reshape(shape) if self.beta is not None else y

    @torch.no_grad()
    def _update_moving_statistics(self, moved):
        # One extra pass over the batch: PyTorch's own update would use the unbiased variance.
        dims = [d for d in range(moved.dim()) if d != 1]
        variance, mean = torch.var_mean(moved, dim=dims, correction=0)
        self.moving_mean.lerp_(mean, 1.0 - self.momentum)
        self.moving_variance.lerp_(variance, 1.0 - self.momentum)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum,
                "moving_mean_initializer": initializers.serialize(self.moving_mean_initializer),
                "moving_variance_initializer": initializers.serialize(self.moving_variance_initializer)}


class LayerNormalization(_AffineNormalization):
    """Keras's LayerNormalization over the last axis (epsilon 1e-3); weights gamma, beta."""

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True, beta_initializer="zeros",
                 gamma_initializer="ones", beta_regularizer=None, gamma_regularizer=None, **kwargs):
        super().__init__(axis, epsilon, center, scale, beta_initializer, gamma_initializer, beta_regularizer,
                         gamma_regularizer, **kwargs)

    def build(self, input_shape):
        super().build(input_shape)
        if self.feature_axis != len(input_shape) - 1:
            raise ConfigError(f"LayerNormalization {self.name}: only the last axis (axis=-1) is supported; got "
                              f"axis={self.axis} for inputs shaped {tuple(input_shape)}.")

    def forward(self, x):
        return F.layer_norm(x, (x.shape[-1],), self.gamma, self.beta, self.epsilon)
