"""Keras metric names and classes, accumulated on the device by the engine."""

from hpctrain.engine import metrics as _engine


class CategoricalAccuracy(_engine.ClassAccuracy):
    name = "categorical_accuracy"

    def __init__(self, name="categorical_accuracy", dtype=None):
        super().__init__(name)


class SparseCategoricalAccuracy(_engine.ClassAccuracy):
    name = "sparse_categorical_accuracy"

    def __init__(self, name="sparse_categorical_accuracy", dtype=None):
        super().__init__(name)


class BinaryAccuracy(_engine.BinaryAccuracy):
    def __init__(self, name="binary_accuracy", dtype=None, threshold=0.5):
        super().__init__(name, threshold=threshold)


class MeanSquaredError(_engine.MeanSquaredError):
    def __init__(self, name="mean_squared_error", dtype=None):
        super().__init__(name)


class MeanAbsoluteError(_engine.MeanAbsoluteError):
    def __init__(self, name="mean_absolute_error", dtype=None):
        super().__init__(name)


Metric = _engine.Metric
get = _engine.resolve_metric

__all__ = ["BinaryAccuracy", "CategoricalAccuracy", "MeanAbsoluteError", "MeanSquaredError", "Metric",
           "SparseCategoricalAccuracy"]
