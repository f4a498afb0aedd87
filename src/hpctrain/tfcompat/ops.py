"""TensorFlow's top-level tensor functions (``tf.constant``, ``tf.one_hot``, ``tf.reduce_mean`` ...)
on ``keras.ops``; they return torch tensors, which have ``.numpy()`` as TensorFlow's tensors do."""

from __future__ import annotations

import numpy as np
import torch

from hpctrain.keras import ops
from hpctrain.keras.call_output import eager_result
from hpctrain.tfcompat.dtypes import DType, as_dtype, int32, int64


def _dtype_name(dtype):
    return None if dtype is None else str(as_dtype(dtype))


def convert_to_tensor(value, dtype=None, dtype_hint=None, name=None):
    """As ``tf.convert_to_tensor``: Python floats become float32, Python ints int32, NumPy arrays
    keep their dtype; ``dtype_hint`` is used only where the value has no dtype of its own."""
    if dtype is None and dtype_hint is not None and not hasattr(value, "dtype"):
        dtype = dtype_hint
    return ops.convert_to_tensor(value, dtype=_dtype_name(dtype))


def constant(value, dtype=None, shape=None, name=None):
    """As ``tf.constant``: a tensor of ``value``; a scalar fills ``shape``, else it is reshaped to it."""
    tensor = convert_to_tensor(value, dtype=dtype)
    if shape is None:
        return tensor
    shape = tuple(int(s) for s in shape)
    if tensor.ndim == 0:
        return ops.broadcast_to(tensor, shape)
    if int(np.prod(shape)) != tensor.numel():
        raise TypeError(f"Eager execution of tf.constant with unsupported shape. Tried to reshape a tensor of "
                        f"{tensor.numel()} elements to shape {list(shape)}.")
    return ops.reshape(tensor, shape)


@eager_result
def cast(x, dtype, name=None):
    """As ``tf.cast``: floats to integers truncate toward zero; to bool is ``x != 0``."""
    return ops.cast(x, _dtype_name(dtype))


def shape(input, out_type=int32, name=None):  # noqa: A002 - TensorFlow's argument name
    """As ``tf.shape``: the shape as a 1-D integer tensor (int32 unless ``out_type`` says)."""
    dims = tuple(ops.shape(input))
    return torch.tensor(dims, dtype=as_dtype(out_type).torch_dtype)


def one_hot(indices, depth, on_value=None, off_value=None, axis=None, dtype=None, name=None):
    """As ``tf.one_hot``: indices outside ``0 .. depth-1`` (e.g. -1) give a row of ``off_value``.

    The dtype is ``dtype``, else that of ``on_value``/``off_value``, else float32."""
    if dtype is None:
        given = on_value if on_value is not None else off_value
        dtype = as_dtype(convert_to_tensor(given).dtype) if given is not None else "float32"
    dtype = _dtype_name(dtype)
    indices = ops.convert_to_tensor(indices)
    hot = ops.expand_dims(indices, -1) == ops.arange(int(depth), dtype=indices.dtype)
    on = ops.convert_to_tensor(1 if on_value is None else on_value, dtype=dtype)
    off = ops.convert_to_tensor(0 if off_value is None else off_value, dtype=dtype)
    result = ops.where(hot, on, off)
    if axis is not None and axis != -1:
        result = ops.moveaxis(result, -1, axis)
    return result


def argmax(input, axis=None, output_type=int64, name=None):  # noqa: A002
    """As ``tf.argmax``: ``axis`` defaults to 0 (not to the flattened tensor), the result is int64."""
    return ops.cast(ops.argmax(input, axis=0 if axis is None else axis), _dtype_name(output_type))


def argmin(input, axis=None, output_type=int64, name=None):  # noqa: A002
    """As ``tf.argmin``: ``axis`` defaults to 0, the result is int64."""
    return ops.cast(ops.argmin(input, axis=0 if axis is None else axis), _dtype_name(output_type))


def _reduce_axis(axis):
    if isinstance(axis, (list, tuple)):
        return tuple(int(a) for a in axis)
    return None if axis is None else int(axis)


@eager_result
def reduce_sum(input_tensor, axis=None, keepdims=False, name=None):
    """As ``tf.reduce_sum``; an integer tensor's sum keeps its dtype."""
    x = ops.convert_to_tensor(input_tensor)
    return ops.cast(ops.sum(x, axis=_reduce_axis(axis), keepdims=keepdims), x.dtype)


@eager_result
def reduce_mean(input_tensor, axis=None, keepdims=False, name=None):
    """As ``tf.reduce_mean``; an integer tensor's mean is integer too (truncated, as TensorFlow's)."""
    x = ops.convert_to_tensor(input_tensor)
    mean = ops.mean(x, axis=_reduce_axis(axis), keepdims=keepdims)
    if not (x.dtype.is_floating_point or x.dtype.is_complex):
        mean = ops.cast(ops.trunc(mean), x.dtype)
    return mean


@eager_result
def reduce_max(input_tensor, axis=None, keepdims=False, name=None):
    """As ``tf.reduce_max``."""
    return ops.max(ops.convert_to_tensor(input_tensor), axis=_reduce_axis(axis), keepdims=keepdims)


@eager_result
def reduce_min(input_tensor, axis=None, keepdims=False, name=None):
    """As ``tf.reduce_min``."""
    return ops.min(ops.convert_to_tensor(input_tensor), axis=_reduce_axis(axis), keepdims=keepdims)


def executing_eagerly() -> bool:
    """Always True: every function runs eagerly here (``tf.function`` does not build graphs)."""
    return True


__all__ = ["DType", "argmax", "argmin", "cast", "constant", "convert_to_tensor", "executing_eagerly",
           "one_hot", "reduce_max", "reduce_mean", "reduce_min", "reduce_sum", "shape"]
