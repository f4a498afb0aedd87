"""Keras metric names and classes, accumulated on the device by the engine; ``Metric`` for your own."""

from __future__ import annotations

import torch

from hpctrain.engine import metrics as _engine
from hpctrain.engine.losses import same_rank
from hpctrain.errors import ConfigError
from hpctrain.keras.layers import _snake_case


class _StandaloneUse:
    """Keras's standalone interface on a built-in metric, for loops of one's own:
    ``update_state(y_true, y_pred, sample_weight=None)``, ``result()`` (a scalar with ``.numpy()``),
    ``reset_state()`` and ``metric(y_true, y_pred)`` (update, then the result). Passed to
    ``compile`` instead, the engine accumulates the same object on the training device."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = torch.as_tensor(y_pred).detach().to(torch.float32)
        if self.total is None:
            self.bind(y_pred.device)
        # Keras casts the labels to the predictions' dtype.
        y_true = torch.as_tensor(y_true).detach().to(y_pred.device, torch.float32)
        y_true, y_pred = same_rank(y_true, y_pred)  # (N,) labels against a one-unit (N, 1) output, as Keras aligns them
        values = self.per_sample(_engine.ModelOutput(y_pred), y_true).to(self.total.dtype)
        if sample_weight is None:
            self.total.add_(values.sum())
            self.count.add_(values.numel())
            return
        weights = torch.as_tensor(sample_weight, dtype=self.total.dtype, device=values.device)
        weights = weights.reshape(values.shape) if weights.numel() == values.numel() else weights.expand_as(values)
        self.total.add_((values * weights).sum())  # Keras: the sample-weighted mean
        self.count.add_(weights.sum())

    def result(self):
        from hpctrain.keras.functional import eager_value

        if self.total is None:
            return eager_value(torch.zeros((), dtype=torch.float32))
        value = self.total / self.count if float(self.count) else torch.zeros_like(self.total)
        return eager_value(value.to(torch.float32))

    def reset_state(self) -> None:
        if self.total is not None:
            self.reset()

    def __call__(self, y_true, y_pred, sample_weight=None):
        self.update_state(y_true, y_pred, sample_weight=sample_weight)
        return self.result()


class CategoricalAccuracy(_StandaloneUse, _engine.ClassAccuracy):
    name = "categorical_accuracy"

    def __init__(self, name="categorical_accuracy", dtype=None):
        super().__init__(name)


class SparseCategoricalAccuracy(_StandaloneUse, _engine.ClassAccuracy):
    name = "sparse_categorical_accuracy"

    def __init__(self, name="sparse_categorical_accuracy", dtype=None):
        super().__init__(name)


class BinaryAccuracy(_StandaloneUse, _engine.BinaryAccuracy):
    def __init__(self, name="binary_accuracy", dtype=None, threshold=0.5):
        super().__init__(name, threshold=threshold)


class MeanSquaredError(_StandaloneUse, _engine.MeanSquaredError):
    def __init__(self, name="mean_squared_error", dtype=None):
        super().__init__(name)


class MeanAbsoluteError(_StandaloneUse, _engine.MeanAbsoluteError):
    def __init__(self, name="mean_absolute_error", dtype=None):
        super().__init__(name)


class Variable(torch.Tensor):
    """A metric's state: a tensor with Keras's ``assign``, ``assign_add`` and ``assign_sub`` (in place)."""

    def assign(self, value):
        with torch.no_grad():
            self.copy_(torch.as_tensor(value, dtype=self.dtype, device=self.device))
        return self

    def assign_add(self, value):
        with torch.no_grad():
            self.add_(torch.as_tensor(value, dtype=self.dtype, device=self.device))
        return self

    def assign_sub(self, value):
        with torch.no_grad():
            self.sub_(torch.as_tensor(value, dtype=self.dtype, device=self.device))
        return self

    @property
    def value(self) -> torch.Tensor:
        return self.as_subclass(torch.Tensor)

    def __deepcopy__(self, memo):
        copied = self.value.clone().as_subclass(Variable)
        copied.initial_value = self.initial_value.clone()
        copied.aggregation = self.aggregation
        memo[id(self)] = copied
        return copied


_INITIALIZERS = {"zeros": torch.zeros, "ones": torch.ones}


class Metric:
    """Base class of your own metrics, as in Keras: state from ``add_variable``/``add_weight``,
    ``update_state(y_true, y_pred, sample_weight=None)``, ``result()``, ``reset_state()``.

    The engine calls ``update_state`` once per batch with torch tensors on the training device
    (``y_pred`` is the model's output: probabilities after a softmax) and reads ``result()``
    when it reports; a pass (train, validation) works on its own copy of the object.
    """

    def __init__(self, name=None, dtype=None):
        self.name = name or _snake_case(type(self).__name__)
        self.dtype = dtype
        self._variables: list[Variable] = []

    def add_variable(self, shape=(), initializer="zeros", dtype=None, aggregation="sum", name=None) -> Variable:
        if isinstance(initializer, str) and initializer not in _INITIALIZERS:
            raise ConfigError(f"metric variable initializer must be 'zeros', 'ones' or a number; got {initializer!r}.")
        dtype = dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype) if dtype else torch.float32
        shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
        start = (_INITIALIZERS[initializer](shape, dtype=dtype) if isinstance(initializer, str)
                 else torch.full(shape, float(initializer), dtype=dtype))
        if aggregation not in ("sum", "mean"):
            raise ConfigError(f"metric variable aggregation must be 'sum' or 'mean' (how replicas combine it); "
                              f"got {aggregation!r}.")
        variable = start.as_subclass(Variable)
        variable.initial_value = start.clone()
        variable.aggregation = aggregation
        self._variables.append(variable)
        return variable

    def add_weight(self, name=None, shape=(), initializer="zeros", dtype=None, aggregation="sum") -> Variable:
        return self.add_variable(shape=shape, initializer=initializer, dtype=dtype, aggregation=aggregation,
                                 name=name)

    @property
    def variables(self) -> list[Variable]:
        return list(self._variables)

    def update_state(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must implement update_state(y_true, y_pred).")

    def result(self):
        raise NotImplementedError(f"{type(self).__name__} must implement result().")

    def reset_state(self) -> None:
        for variable in self._variables:
            variable.assign(variable.initial_value)

    def __call__(self, y_true, y_pred, sample_weight=None):
        """Update with one batch and return the result, as Keras's ``metric(y_true, y_pred)`` does."""
        self.update_state(torch.as_tensor(y_true), torch.as_tensor(y_pred), sample_weight=sample_weight)
        return self.result()

    def to_device(self, device) -> None:
        """Moves the state onto the training device; the variables stay the same objects."""
        for variable in self._variables:
            variable.data = variable.data.to(device)
            variable.initial_value = variable.initial_value.to(device)

    def get_config(self) -> dict:
        return {"name": self.name}


get = _engine.resolve_metric

__all__ = ["BinaryAccuracy", "CategoricalAccuracy", "MeanAbsoluteError", "MeanSquaredError", "Metric",
           "SparseCategoricalAccuracy", "Variable"]
