"""Keras losses: functions ``fn(y_true, y_pred)`` returning per-sample losses, classes returning the
batch mean, and :func:`get`, which turns any of them into the engine's loss.

Keras orders arguments ``(y_true, y_pred)``; the engine (like PyTorch) orders them
``(prediction, target)``. The conversion happens here, once.
"""

from __future__ import annotations

import torch

from hpctrain.engine import losses as engine_losses
from hpctrain.errors import ConfigError, valid_names_hint
from hpctrain.keras.layers import _snake_case


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


REDUCTIONS = ("sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", "none", None)


class Loss:
    """Keras loss class: subclasses implement ``call(y_true, y_pred)`` returning per-sample losses.

    ``loss(y_true, y_pred, sample_weight=None)`` weights them and reduces them as Keras does:
    ``"sum_over_batch_size"`` (default) and ``"mean"`` divide the weighted sum by the number of
    values, ``"mean_with_sample_weight"`` by the sum of the weights, ``"sum"`` does not divide,
    ``"none"``/``None`` returns the weighted values. Both arguments are cast to float32 first.
    """

    # Keras's own losses and wrapped functions align (N,) labels with (N, 1) predictions before
    # ``call``; a subclass's ``call`` gets them as they are, as in Keras.
    aligns_ranks = False

    def __init__(self, name=None, reduction="sum_over_batch_size", dtype=None):
        if reduction not in REDUCTIONS:
            raise ConfigError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}; got {reduction!r}.")
        self.name = name or _snake_case(type(self).__name__)
        self.reduction = reduction

    def call(self, y_true, y_pred):
        raise NotImplementedError(f"{type(self).__name__} must implement call(self, y_true, y_pred).")

    def __call__(self, y_true, y_pred, sample_weight=None):
        value = self._reduced(y_true, y_pred, sample_weight)
        if isinstance(y_true, torch.Tensor) or isinstance(y_pred, torch.Tensor):
            return value  # differentiable, e.g. inside a custom training step
        from hpctrain.keras.functional import eager_value

        return eager_value(value)  # on NumPy data: a value with .numpy(), as Keras returns

    def _reduced(self, y_true, y_pred, sample_weight):
        y_pred = torch.as_tensor(y_pred, dtype=torch.float32) if not isinstance(y_pred, torch.Tensor) else y_pred
        y_true = torch.as_tensor(y_true).to(y_pred.dtype)
        if self.aligns_ranks:
            y_true, y_pred = engine_losses.same_rank(y_true, y_pred)
        values = torch.as_tensor(self.call(y_true, y_pred))
        if sample_weight is not None:
            sample_weight = torch.as_tensor(sample_weight, device=values.device)
            values = engine_losses.weighted_values(values, sample_weight)
        if self.reduction in ("none", None) or values.dim() == 0:
            return values
        total = values.sum()
        if self.reduction == "sum":
            return total
        if self.reduction == "mean_with_sample_weight" and sample_weight is not None:
            return total / sample_weight.sum()
        return total / values.numel()

    def get_config(self) -> dict:
        return {"name": self.name, "reduction": self.reduction}

    def engine_loss(self) -> engine_losses.Loss:
        """The engine's form of this loss; losses written by users run their ``call`` under autograd."""
        return KerasLoss(self)


class LossFunctionWrapper(Loss):
    """A Keras loss from a function ``fn(y_true, y_pred) -> per-sample losses``."""

    aligns_ranks = True

    def __init__(self, fn, reduction="sum_over_batch_size", name=None, **kwargs):
        super().__init__(name=name or getattr(fn, "__name__", "loss"), reduction=reduction)
        self.fn = fn
        self.fn_kwargs = kwargs

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred, **self.fn_kwargs)


class KerasLoss(engine_losses.Loss):
    """A Keras :class:`Loss` object as the engine's loss, with the engine's ``(prediction, target)`` order."""

    def __init__(self, loss: Loss):
        if loss.reduction in ("none", None):
            raise ConfigError(f"the loss {loss.name} has reduction={loss.reduction!r}: one value per sample, but "
                              "training needs one number per batch. Use 'sum_over_batch_size' (the default).")
        self.keras_loss = loss
        self.name = loss.name

    def __call__(self, prediction, target):
        return self.keras_loss(target, prediction)

    def per_sample(self, prediction, target):
        target = target.to(prediction.dtype)
        if self.keras_loss.aligns_ranks:
            target, prediction = engine_losses.same_rank(target, prediction)
        return torch.as_tensor(self.keras_loss.call(target, prediction))

    def weighted(self, prediction, target, weights):
        return self.keras_loss(target, prediction, sample_weight=weights)


class _BuiltinLoss(Loss):
    """A built-in loss: the engine runs its own form (static executor) unless the reduction differs."""

    aligns_ranks = True

    def engine_loss(self):
        if self.reduction in ("sum_over_batch_size", "mean"):
            return self.builtin_engine_loss()
        return KerasLoss(self)

    def builtin_engine_loss(self) -> engine_losses.Loss:
        raise NotImplementedError


# Keras's cross-entropy options that change the loss; accepted at their defaults only.
_UNSUPPORTED_DEFAULTS = {"label_smoothing": 0.0, "ignore_class": None, "axis": -1}


class _FromLogitsLoss(_BuiltinLoss):
    function = None

    def __init__(self, from_logits=False, name=None, **kwargs):
        for option, default in _UNSUPPORTED_DEFAULTS.items():
            if option in kwargs and kwargs.pop(option) != default:
                raise ConfigError(f"{type(self).__name__}({option}=...) is not supported yet; remove it (the "
                                  f"default is {default!r}), or write the loss as a function of (y_true, y_pred).")
        super().__init__(name=name, **kwargs)
        self.from_logits = from_logits

    def call(self, y_true, y_pred):
        return type(self).function(y_true, y_pred, from_logits=self.from_logits)


class CategoricalCrossentropy(_FromLogitsLoss):
    function = staticmethod(categorical_crossentropy)

    def builtin_engine_loss(self):
        return engine_losses.CrossEntropy(sparse=False, from_logits=self.from_logits)


class SparseCategoricalCrossentropy(_FromLogitsLoss):
    function = staticmethod(sparse_categorical_crossentropy)

    def builtin_engine_loss(self):
        return engine_losses.CrossEntropy(sparse=True, from_logits=self.from_logits)


class BinaryCrossentropy(_FromLogitsLoss):
    function = staticmethod(binary_crossentropy)

    def builtin_engine_loss(self):
        return engine_losses.BinaryCrossentropy(from_logits=self.from_logits)


class MeanSquaredError(_BuiltinLoss):
    def call(self, y_true, y_pred):
        return mean_squared_error(y_true, y_pred)

    def builtin_engine_loss(self):
        return engine_losses.MeanSquaredError()


class MeanAbsoluteError(_BuiltinLoss):
    def call(self, y_true, y_pred):
        return mean_absolute_error(y_true, y_pred)

    def builtin_engine_loss(self):
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
        return KerasLoss(LossFunctionWrapper(identifier))
    raise ConfigError(f"loss must be a name, a Keras loss or a callable(y_true, y_pred); got {identifier!r}.")
