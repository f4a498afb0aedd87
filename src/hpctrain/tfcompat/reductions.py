"""TensorFlow's reductions beyond ``tf.reduce_sum/mean/max/min`` (in :mod:`ops`), ``tf.math.top_k``,
``tf.math.confusion_matrix`` and the counts and sums tutorials use, on ``keras.ops`` and torch."""

from __future__ import annotations

import collections

import torch

from hpctrain.keras import ops
from hpctrain.keras.call_output import eager_result
from hpctrain.tfcompat.dtypes import as_dtype, int32, int64
from hpctrain.tfcompat.ops import _reduce_axis, convert_to_tensor


@eager_result
def reduce_prod(input_tensor, axis=None, keepdims=False, name=None):
    """As ``tf.reduce_prod``; an integer tensor's product keeps its dtype (torch's would be int64)."""
    x = convert_to_tensor(input_tensor)
    return ops.cast(ops.prod(x, axis=_reduce_axis(axis), keepdims=keepdims), x.dtype)


def reduce_any(input_tensor, axis=None, keepdims=False, name=None):
    """As ``tf.reduce_any``: a bool tensor."""
    return ops.any(convert_to_tensor(input_tensor), axis=_reduce_axis(axis), keepdims=keepdims)


def reduce_all(input_tensor, axis=None, keepdims=False, name=None):
    return ops.all(convert_to_tensor(input_tensor), axis=_reduce_axis(axis), keepdims=keepdims)


@eager_result
def reduce_std(input_tensor, axis=None, keepdims=False, name=None):
    """As ``tf.math.reduce_std``: the population standard deviation (divided by N, not N-1)."""
    return ops.std(convert_to_tensor(input_tensor), axis=_reduce_axis(axis), keepdims=keepdims)


@eager_result
def reduce_variance(input_tensor, axis=None, keepdims=False, name=None):
    """As ``tf.math.reduce_variance``: the population variance (divided by N)."""
    return ops.var(convert_to_tensor(input_tensor), axis=_reduce_axis(axis), keepdims=keepdims)


@eager_result
def reduce_logsumexp(input_tensor, axis=None, keepdims=False, name=None):
    return ops.logsumexp(convert_to_tensor(input_tensor), axis=_reduce_axis(axis), keepdims=keepdims)


def count_nonzero(input, axis=None, keepdims=None, dtype=int64, name=None):  # noqa: A002 - TensorFlow's name
    """As ``tf.math.count_nonzero``: an int64 count unless ``dtype`` says."""
    x = convert_to_tensor(input)
    counts = ops.sum(ops.cast(ops.not_equal(x, 0), "int64"), axis=_reduce_axis(axis), keepdims=bool(keepdims))
    return ops.cast(counts, str(as_dtype(dtype)))


@eager_result
def cumsum(x, axis=0, exclusive=False, reverse=False, name=None):
    """As ``tf.math.cumsum``: along axis 0 unless ``axis`` says; ``exclusive`` leaves each element
    out of its own sum, ``reverse`` sums from the end."""
    x = convert_to_tensor(x)
    axis = int(axis)
    if reverse:
        x = ops.flip(x, axis=axis)
    total = ops.cumsum(x, axis=axis)
    if exclusive:
        total = total - x
    return ops.flip(total, axis=axis) if reverse else total


@eager_result
def add_n(inputs, name=None):
    """As ``tf.math.add_n``: the element-wise sum of a list of tensors of one shape."""
    tensors = [convert_to_tensor(t) for t in inputs]
    if not tensors:
        raise ValueError("inputs must be a non-empty list of tensors of the same shape and dtype.")
    total = tensors[0]
    for tensor in tensors[1:]:
        total = total + tensor
    return total


TopKV2 = collections.namedtuple("TopKV2", ["values", "indices"])


@eager_result
def _largest(x, k, index_dtype):
    # A list, not the namedtuple: eager_result rebuilds sequences from their items.
    values, indices = torch.sort(x, dim=-1, descending=True, stable=True)
    return [values[..., :k], indices[..., :k].to(index_dtype)]


def top_k(input, k=1, sorted=True, index_type=int32, name=None):  # noqa: A002
    """As ``tf.math.top_k``: the ``k`` largest entries along the last axis and their int32 indices;
    of equal values the lower index comes first, as in TensorFlow."""
    x = convert_to_tensor(input)
    if k > x.shape[-1]:
        raise ValueError(f"input must have at least k={k} columns; it has {x.shape[-1]}.")
    return TopKV2(*_largest(x, int(k), as_dtype(index_type).torch_dtype))


def _class_count(labels, predictions, num_classes):
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError("`labels` contains negative values.")
    if predictions.numel() and int(predictions.min()) < 0:
        raise ValueError("`predictions` contains negative values.")
    if num_classes is None:
        largest = max([int(t.max()) for t in (labels, predictions) if t.numel()], default=-1)
        return largest + 1
    num_classes = int(num_classes)
    for what, values in (("labels", labels), ("predictions", predictions)):
        if values.numel() and int(values.max()) >= num_classes:
            raise ValueError(f"`{what}` out of bound: a value is >= num_classes ({num_classes}).")
    return num_classes


def confusion_matrix(labels, predictions, num_classes=None, weights=None, dtype=int32, name=None):
    """As ``tf.math.confusion_matrix``: entry ``[i, j]`` counts (or sums ``weights`` over) the
    examples with label ``i`` predicted as ``j``. ``num_classes`` defaults to one more than the
    largest label or prediction; the counts are int32 unless ``dtype`` says."""
    labels = convert_to_tensor(labels).reshape(-1).to(torch.int64)
    predictions = convert_to_tensor(predictions).reshape(-1).to(torch.int64).to(labels.device)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels and predictions must have the same shape; got {tuple(labels.shape)} "
                         f"and {tuple(predictions.shape)}.")
    n = _class_count(labels, predictions, num_classes)
    cell = labels * n + predictions
    if weights is not None:
        weights = convert_to_tensor(weights).reshape(-1).to(torch.float64).to(labels.device)
    counts = torch.bincount(cell, weights=weights, minlength=n * n)
    return counts.reshape(n, n).to(as_dtype(dtype).torch_dtype)
