"""``tf.Variable`` on ``keras.Variable``, with TensorFlow's signature."""

from __future__ import annotations

from hpctrain import keras
import torch

from hpctrain.tfcompat.dtypes import as_dtype
from hpctrain.tfcompat.ops import convert_to_tensor


class Variable(keras.Variable):
    """As ``tf.Variable(initial_value, trainable=True, name=None, dtype=None)``: a ``keras.Variable``
    (a torch parameter inside), so Keras optimizers and ``tf.GradientTape`` train it.

    Its dtype is inferred as ``tf.constant`` infers it (``tf.Variable(1)`` is int32,
    ``tf.Variable(1.0)`` float32). ``assign``, ``assign_add`` and ``assign_sub`` return the variable,
    as TensorFlow's do; ``numpy()`` gives its value. Torch can record gradients only for floating
    point tensors, so a variable of another dtype is never trainable."""

    def __init__(self, initial_value=None, trainable=None, validate_shape=True, caching_device=None, name=None,
                 variable_def=None, dtype=None, import_scope=None, constraint=None, synchronization="auto",
                 aggregation="none", shape=None, **kwargs):
        if initial_value is None:
            raise ValueError("The `initial_value` arg (tf.Variable(initial_value, ...)) must be specified.")
        if callable(initial_value):
            initial_value = initial_value()
        value = convert_to_tensor(initial_value, dtype=dtype)
        dtype = as_dtype(value.dtype)
        differentiable = dtype.is_floating
        super().__init__(value, dtype=str(dtype), trainable=(trainable is not False) and differentiable,
                         name="Variable" if name is None else name.replace("/", "_").removesuffix(":0"),
                         synchronization=synchronization, aggregation=aggregation, **kwargs)
        if constraint is not None:
            self.constraint = constraint

    def assign(self, value, use_locking=None, name=None, read_value=True):
        super().assign(_detached(value))
        return self

    def assign_add(self, delta, use_locking=None, name=None, read_value=True):
        super().assign_add(_detached(delta))
        return self

    def assign_sub(self, delta, use_locking=None, name=None, read_value=True):
        super().assign_sub(_detached(delta))
        return self

    def read_value(self):
        return self.value


def _detached(value):
    # An assignment is not differentiable in TensorFlow either: the graph behind ``value`` is cut.
    return value.detach() if isinstance(value, torch.Tensor) else value
