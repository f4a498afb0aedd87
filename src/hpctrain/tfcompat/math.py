"""``tf.math``: TensorFlow's element-wise math, comparisons, ``matmul`` and reductions, with
TensorFlow's argument names, on ``keras.ops``. The top-level names (``tf.exp``, ``tf.add``,
``tf.matmul`` ...) are these same functions.

Arguments are converted as ``tf.convert_to_tensor`` does (Python floats become float32, ints
int32); where operands' dtypes differ, ``keras.ops``'s type promotion applies, where TensorFlow
would raise.
"""

from __future__ import annotations

import torch

from hpctrain.keras import ops
from hpctrain.keras.call_output import eager_result
# Re-exported: tf.math.reduce_sum, tf.math.top_k ... are these functions.
from hpctrain.tfcompat.ops import (argmax, argmin, convert_to_tensor, reduce_max, reduce_mean, reduce_min,
                                   reduce_sum)  # noqa: F401
from hpctrain.tfcompat.reductions import (TopKV2, add_n, confusion_matrix, count_nonzero, cumsum, reduce_all,
                                          reduce_any, reduce_logsumexp, reduce_prod, reduce_std, reduce_variance,
                                          top_k)  # noqa: F401


def _unary(tf_name: str, keras_op):
    @eager_result
    def function(x, name=None):
        return keras_op(convert_to_tensor(x))

    function.__name__ = function.__qualname__ = tf_name
    function.__doc__ = f"As ``tf.math.{tf_name}``, on ``keras.ops.{keras_op.__name__}``."
    return function


def _binary(tf_name: str, keras_op):
    @eager_result
    def function(x, y, name=None):
        return keras_op(convert_to_tensor(x), convert_to_tensor(y))

    function.__name__ = function.__qualname__ = tf_name
    function.__doc__ = f"As ``tf.math.{tf_name}`` (broadcasting), on ``keras.ops.{keras_op.__name__}``."
    return function


# tf.math name -> keras.ops function of one tensor.
_UNARY = {
    "exp": ops.exp, "log": ops.log, "sqrt": ops.sqrt, "square": ops.square, "abs": ops.abs, "sign": ops.sign,
    "floor": ops.floor, "ceil": ops.ceil, "negative": ops.negative, "reciprocal": ops.reciprocal,
    "log1p": ops.log1p, "expm1": ops.expm1, "rsqrt": ops.rsqrt, "sin": ops.sin, "cos": ops.cos, "tan": ops.tan,
    "sinh": ops.sinh, "cosh": ops.cosh, "asin": ops.arcsin, "acos": ops.arccos, "atan": ops.arctan,
    "erf": ops.erf, "sigmoid": ops.sigmoid, "tanh": ops.tanh, "softplus": ops.softplus,
    "log_sigmoid": ops.log_sigmoid, "is_nan": ops.isnan, "is_finite": ops.isfinite, "is_inf": ops.isinf,
    "logical_not": ops.logical_not,
}
# tf.math name -> keras.ops function of two broadcast tensors.
_BINARY = {
    "add": ops.add, "subtract": ops.subtract, "multiply": ops.multiply, "maximum": ops.maximum,
    "minimum": ops.minimum, "pow": ops.power, "floordiv": ops.floor_divide, "floormod": ops.mod,
    "mod": ops.mod, "equal": ops.equal, "not_equal": ops.not_equal, "less": ops.less,
    "less_equal": ops.less_equal, "greater": ops.greater, "greater_equal": ops.greater_equal,
    "logical_and": ops.logical_and, "logical_or": ops.logical_or, "logical_xor": ops.logical_xor,
    "squared_difference": lambda x, y: ops.square(ops.subtract(x, y)),
}
for _name, _op in _UNARY.items():
    globals()[_name] = _unary(_name, _op)
for _name, _op in _BINARY.items():
    globals()[_name] = _binary(_name, _op)


@eager_result
def round(x, name=None):  # noqa: A001 - TensorFlow's name
    """As ``tf.math.round``: halves round to the even neighbour (``round(2.5) == 2``)."""
    return ops.round(convert_to_tensor(x))


def _like(value, other):
    """``value`` as a tensor; a Python number or list takes the dtype of the tensor ``other`` where
    both are integers or both floating point, as TensorFlow converts an operator's Python operand."""
    tensor = convert_to_tensor(value)
    if isinstance(value, torch.Tensor) or hasattr(value, "dtype") or not isinstance(other, torch.Tensor):
        return tensor
    same_kind = tensor.dtype.is_floating_point == other.dtype.is_floating_point
    if same_kind and torch.bool not in (tensor.dtype, other.dtype):
        return ops.cast(tensor, other.dtype)
    return tensor


def _true_divide(x, y):
    x = _like(x, y)
    y = _like(y, x)
    if x.dtype.is_floating_point or y.dtype.is_floating_point or x.dtype.is_complex or y.dtype.is_complex:
        return ops.divide(x, y)
    # TensorFlow's truediv of integers: 8- and 16-bit give float32, 32- and 64-bit float64.
    wide = torch.promote_types(x.dtype, y.dtype) in (torch.int32, torch.int64)
    floating = "float64" if wide else "float32"
    return ops.divide(ops.cast(x, floating), ops.cast(y, floating))


@eager_result
def divide(x, y, name=None):
    """As ``tf.math.divide`` (``x / y``): integers divide to float64 (int32, int64) or float32."""
    return _true_divide(x, y)


truediv = divide


@eager_result
def divide_no_nan(x, y, name=None):
    """As ``tf.math.divide_no_nan``: 0 where ``y`` is 0."""
    quotient = _true_divide(x, y)
    y = convert_to_tensor(y)
    return ops.where(ops.equal(y, 0), ops.zeros_like(quotient), quotient)


@eager_result
def clip_by_value(t, clip_value_min, clip_value_max, name=None):
    """As ``tf.clip_by_value``."""
    return ops.clip(convert_to_tensor(t), clip_value_min, clip_value_max)


def _matrix_side(x, transpose, adjoint):
    if transpose and adjoint:
        raise ValueError("Only one of transpose and adjoint may be True for an operand.")
    if transpose or adjoint:
        x = ops.swapaxes(x, -1, -2)
    return ops.conj(x) if adjoint else x


@eager_result
def matmul(a, b, transpose_a=False, transpose_b=False, adjoint_a=False, adjoint_b=False, a_is_sparse=False,
           b_is_sparse=False, output_type=None, grad_a=False, grad_b=False, name=None):
    """As ``tf.linalg.matmul``: ``a @ b`` over the last two axes, batched over the others;
    ``transpose_*``/``adjoint_*`` transpose (and conjugate) an operand first."""
    a = _matrix_side(convert_to_tensor(a), transpose_a, adjoint_a)
    b = _matrix_side(convert_to_tensor(b), transpose_b, adjoint_b)
    product = ops.matmul(a, b)
    return product if output_type is None else ops.cast(product, str(output_type))


@eager_result
def l2_normalize(x, axis=None, epsilon=1e-12, name=None, dim=None):
    """As ``tf.math.l2_normalize``: ``x / sqrt(max(sum(x**2, axis), epsilon))``; over every axis
    unless ``axis`` says."""
    x = convert_to_tensor(x)
    axis = dim if axis is None else axis
    squares = ops.sum(ops.square(x), axis=None if axis is None else axis, keepdims=True)
    return x * ops.rsqrt(ops.maximum(squares, epsilon))


_EQUIVALENTS = {
    "segment_sum": "keras.ops.segment_sum", "segment_max": "keras.ops.segment_max",
    "unsorted_segment_sum": "keras.ops.segment_sum", "reduce_euclidean_norm": "keras.ops.norm",
    "in_top_k": "keras.ops.in_top_k", "bincount": "keras.ops.bincount", "cumprod": "keras.ops.cumprod",
}


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    if name in _EQUIVALENTS:
        equivalent = _EQUIVALENTS[name]
    elif callable(getattr(ops, name, None)):
        equivalent = f"keras.ops.{name}"
    else:
        equivalent = "keras.ops (https://keras.io/api/ops/)"
    raise AttributeError(f"hpctrain has no tf.math.{name}; use {equivalent}.")


__all__ = sorted([*_UNARY, *_BINARY, "TopKV2", "add_n", "argmax", "argmin", "clip_by_value", "confusion_matrix",
                  "count_nonzero", "cumsum", "divide", "divide_no_nan", "l2_normalize", "matmul", "reduce_all",
                  "reduce_any", "reduce_logsumexp", "reduce_max", "reduce_mean", "reduce_min", "reduce_prod",
                  "reduce_std", "reduce_sum", "reduce_variance", "round", "top_k", "truediv"])
