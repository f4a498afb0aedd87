"""Keras losses: functions ``fn(y_true, y_pred)`` returning per-sample losses, classes returning the
batch mean, and :func:`get`, which turns any of them into the engine's loss.

Keras orders arguments ``(y_true, y_pred)``; the engine (like PyTorch) orders them
``(prediction, target)``. The conversion happens here, once.
"""

from __future__ import annotations

import torch

from hpctrain.engine import losses as engine_losses
from hpctrain.errors import ConfigError, valid_names_hint


def _tensors(y_true, y_pred):
    return torch.as_tensor(y_true), torch.as_tensor(y_pred, dtype=torch.float32)


def _keras_target(y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
    return y_true.to(y_pred.dtype) if y_true.is_floating_point() or y_true.shape == y_pred.shape else y_true


def categorical_crossentropy(y_true, y_pred, from_logits=False):
    y_true, y_pred = _tensors(y_true, y_pred)
    log_probs = torch.log_softmax(y_pred, -1) if from_logits else engine_losses._clipped_log_probs(y_pred)
    return -(y_true.to(y_pred.dtype) * log_probs).sum(-1)


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False):
    y_true, y_pred = _tensors(y_true, y_pred)
    log_probs = torch.log_softmax(y_pred, -1) if from_logits else engine_losses._clipped_log_probs(y_pred)
    index = y_true.reshape(log_probs.shape[:-1]).to(torch.int64)
    return -log_probs.gather(-1, index.unsqueeze(-1)).squeeze(-1)


def binary_crossentropy(y_true, y_pred, from_logits=False):
    y_true, y_pred = _tensors(y_true, y_pred)
    y_true = y_true.to(y_pred.dtype)
    if from_logits:
        per_element = torch.nn.functional.binary_cross_entropy_with_logits(y_pred, y_true, reduction="none")
    else:
        probs = y_pred.clamp(engine_losses.KERAS_EPSILON, 1 - engine_losses.KERAS_EPSILON)
        per_element = torch.nn.functional.binary_cross_entropy(probs, y_true, reduction="none")
    return per_element.mean(-1)


def mean_squared_error(y_true, y_pred):
    y_true, y_pred = _tensors(y_true, y_pred)
    return (y_pred - y_true.to(y_pred.dtype)).square().mean(-1)


def mean_absolute_error(y_true, y_pred):
    y_true, y_pred = _tensors(y_true, y_pred)
    return (y_pred - y_true.to(y_pred.dtype)).abs().mean(-1)


mse = MSE = mean_squared_error
mae = MAE = mean_absolute_error


class Loss:
    """Keras loss class: ``loss(y_true, y_pred)`` is the batch mean of the per-sample losses."""

    def __init__(self, name=None, reduction="sum_over_batch_size"):
        if reduction not in ("sum_over_batch_size", "auto"):
            raise ConfigError(f"only reduction='sum_over_batch_size' is supported; got {reduction!r}.")
        self.name = name or type(self).__name__

    def call(self, y_true, y_pred):
        raise NotImplementedError

    def __call__(self, y_true, y_pred, sample_weight=None):
        value = self.call(y_true, y_pred).mean()
        if isinstance(y_true, torch.Tensor) or isinstance(y_pred, torch.Tensor):
            return value  # differentiable, e.g. inside a custom training step
        from hpctrain.keras.functional import eager_value

        return eager_value(value)  # on NumPy data: a value with .numpy(), as Keras returns

    def engine_loss(self) -> engine_losses.Loss:
        """The engine's form of this loss; subclasses written by users fall back to ``call``."""
        return engine_losses.CallableLoss(lambda prediction, target: self.call(target, prediction).mean())


class _FromLogitsLoss(Loss):
    function = None

    def __init__(self, from_logits=False, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.from_logits = from_logits

    def call(self, y_true, y_pred):
        return type(self).function(y_true, y_pred, from_logits=self.from_logits)


class CategoricalCrossentropy(_FromLogitsLoss):
    function = staticmethod(categorical_crossentropy)

    def engine_loss(self):
        return engine_losses.CrossEntropy(sparse=False, from_logits=self.from_logits)


class SparseCategoricalCrossentropy(_FromLogitsLoss):
    function = staticmethod(sparse_categorical_crossentropy)

    def engine_loss(self):
        return engine_losses.CrossEntropy(sparse=True, from_logits=self.from_logits)


class BinaryCrossentropy(_FromLogitsLoss):
    function = staticmethod(binary_crossentropy)

    def engine_loss(self):
        return engine_losses.BinaryCrossentropy(from_logits=self.from_logits)


class MeanSquaredError(Loss):
    def call(self, y_true, y_pred):
        return mean_squared_error(y_true, y_pred)

    def engine_loss(self):
        return engine_losses.MeanSquaredError()


class MeanAbsoluteError(Loss):
    def call(self, y_true, y_pred):
        return mean_absolute_error(y_true, y_pred)

    def engine_loss(self):
        return engine_losses.MeanAbsoluteError()


_CLASS_BY_NAME = {
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError,
    "mae": MeanAbsoluteError,
}
_CLASS_BY_FUNCTION = {
    categorical_crossentropy: CategoricalCrossentropy,
    sparse_categorical_crossentropy: SparseCategoricalCrossentropy,
    binary_crossentropy: BinaryCrossentropy,
    mean_squared_error: MeanSquaredError,
    mean_absolute_error: MeanAbsoluteError,
}


def get(identifier) -> engine_losses.Loss:
    """The engine loss for a Keras loss name, function, class or instance, or a custom ``fn(y_true, y_pred)``."""
    if isinstance(identifier, engine_losses.Loss):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key not in _CLASS_BY_NAME:
            raise ConfigError(f"unknown loss {identifier!r}; {valid_names_hint(_CLASS_BY_NAME)}, or a callable.")
        return _CLASS_BY_NAME[key]().engine_loss()
    if isinstance(identifier, type) and issubclass(identifier, Loss):
        return identifier().engine_loss()
    if isinstance(identifier, Loss):
        return identifier.engine_loss()
    if identifier in _CLASS_BY_FUNCTION:
        return _CLASS_BY_FUNCTION[identifier]().engine_loss()
    if callable(identifier):
        loss = engine_losses.CallableLoss(lambda prediction, target: identifier(target, prediction).mean())
        loss.name = getattr(identifier, "__name__", "loss")
        return loss
    raise ConfigError(f"loss must be a name, a Keras loss or a callable(y_true, y_pred); got {identifier!r}.")
