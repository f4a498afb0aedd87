"""TensorFlow's array functions (``tf.reshape``, ``tf.concat``, ``tf.range``, ``tf.gather`` ...), with
TensorFlow's argument names, defaults and dtypes, on ``keras.ops`` (torch where it has none)."""

from __future__ import annotations

import collections

import numpy as np
import torch

from hpctrain.keras import ops
from hpctrain.keras.call_output import eager_result
from hpctrain.tfcompat.dtypes import as_dtype, float32, float64, int32, int64
from hpctrain.tfcompat.ops import convert_to_tensor

_builtin_range = range  # tf.range below takes the name

# x[..., tf.newaxis] adds an axis, as None does in NumPy and torch indexing.
newaxis = None


def _dtype_name(dtype):
    return None if dtype is None else str(as_dtype(dtype))


def _ints(shape) -> tuple:
    """A shape given as an int, a list, a torch.Size or a 1-D tensor (``tf.shape(x)``) as a tuple."""
    if isinstance(shape, torch.Tensor):
        return tuple(int(s) for s in shape.reshape(-1).tolist())
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(s) for s in shape)


def _axes(axis):
    if axis is None:
        return None
    if isinstance(axis, torch.Tensor):
        axis = axis.tolist()
    return tuple(int(a) for a in axis) if isinstance(axis, (list, tuple)) else int(axis)


@eager_result
def reshape(tensor, shape, name=None):
    """As ``tf.reshape``: ``shape`` may hold one -1 and may be a tensor such as ``tf.shape(x)``."""
    return ops.reshape(convert_to_tensor(tensor), _ints(shape))


@eager_result
def expand_dims(input, axis, name=None):  # noqa: A002 - TensorFlow's argument name
    return ops.expand_dims(convert_to_tensor(input), int(axis))


@eager_result
def squeeze(input, axis=None, name=None):  # noqa: A002
    """As ``tf.squeeze``: every size-1 axis, or those in ``axis``; naming an axis whose size is not 1
    raises, as in TensorFlow (torch would leave it silently)."""
    x = convert_to_tensor(input)
    axis = _axes(axis)
    for a in (axis,) if isinstance(axis, int) else axis or ():
        if x.shape[a] != 1:
            raise ValueError(f"Can not squeeze dim[{a}], expected a dimension of 1, got {x.shape[a]}")
    return ops.squeeze(x, axis=axis)


@eager_result
def concat(values, axis, name=None):
    """As ``tf.concat``: ``axis`` is required."""
    return ops.concatenate([convert_to_tensor(v) for v in values], axis=int(axis))


@eager_result
def stack(values, axis=0, name=None):
    return ops.stack([convert_to_tensor(v) for v in values], axis=int(axis))


@eager_result
def unstack(value, num=None, axis=0, name=None):
    """As ``tf.unstack``: a list of the tensors along ``axis``."""
    return list(ops.unstack(convert_to_tensor(value), axis=int(axis)))


def zeros(shape, dtype=float32, name=None, layout=None):
    """As ``tf.zeros``: float32 unless ``dtype`` says."""
    return ops.zeros(_ints(shape), dtype=_dtype_name(dtype))


def ones(shape, dtype=float32, name=None, layout=None):
    return ops.ones(_ints(shape), dtype=_dtype_name(dtype))


def zeros_like(input, dtype=None, name=None, layout=None):  # noqa: A002
    """As ``tf.zeros_like``: the dtype of ``input`` unless ``dtype`` says."""
    return ops.zeros_like(convert_to_tensor(input), dtype=_dtype_name(dtype))


def ones_like(input, dtype=None, name=None, layout=None):  # noqa: A002
    return ops.ones_like(convert_to_tensor(input), dtype=_dtype_name(dtype))


def fill(dims, value, name=None, layout=None):
    """As ``tf.fill``: the dtype is that of ``value`` (a Python int gives int32, a float float32)."""
    value = convert_to_tensor(value)
    return ops.full(_ints(dims), value, dtype=str(as_dtype(value.dtype)))


def eye(num_rows, num_columns=None, batch_shape=None, dtype=float32, name=None):
    matrix = ops.eye(int(num_rows), None if num_columns is None else int(num_columns), dtype=_dtype_name(dtype))
    if batch_shape is None:
        return matrix
    return ops.broadcast_to(matrix, _ints(batch_shape) + tuple(matrix.shape))


# TensorFlow's range takes the widest dtype of its arguments, in this order.
_RANGE_DTYPES = (int32, int64, float32, float64)


def range(start, limit=None, delta=1, dtype=None, name="range"):  # noqa: A001 - TensorFlow's name
    """As ``tf.range``: ``tf.range(5)`` is ``[0 1 2 3 4]`` as int32; a float argument makes it float32."""
    if limit is None:
        start, limit = 0, start
    if dtype is None:
        inferred = [as_dtype(convert_to_tensor(v).dtype) for v in (start, limit, delta)]
        dtype = max(inferred, key=lambda d: _RANGE_DTYPES.index(d) if d in _RANGE_DTYPES else 0)
    bounds = [v.item() if isinstance(v, torch.Tensor) else v for v in (start, limit, delta)]
    return ops.arange(*bounds, dtype=_dtype_name(dtype))


@eager_result
def transpose(a, perm=None, conjugate=False, name="transpose"):
    """As ``tf.transpose``: the axes reversed unless ``perm`` orders them."""
    x = convert_to_tensor(a)
    perm = tuple(reversed(_builtin_range(x.ndim))) if perm is None else _ints(perm)
    x = ops.transpose(x, axes=perm)
    return ops.conj(x) if conjugate else x


@eager_result
def broadcast_to(input, shape, name=None):  # noqa: A002
    return ops.broadcast_to(convert_to_tensor(input), _ints(shape))


@eager_result
def identity(input, name=None):  # noqa: A002
    """As ``tf.identity``: a new tensor of the same value; of a variable, a copy of its current value
    (which a later ``assign`` does not change). Gradients flow through it."""
    return ops.convert_to_tensor(input).clone()


@eager_result
def gather(params, indices, validate_indices=None, axis=None, batch_dims=0, name=None):
    """As ``tf.gather``: slices of ``params`` along ``axis`` (default 0) at ``indices``."""
    if batch_dims != 0:
        raise NotImplementedError("tf.gather with batch_dims is not supported here; use keras.ops.take_along_axis.")
    return ops.take(convert_to_tensor(params), convert_to_tensor(indices), axis=0 if axis is None else int(axis))


@eager_result
def tile(input, multiples, name=None):  # noqa: A002
    return ops.tile(convert_to_tensor(input), _ints(multiples))


@eager_result
def pad(tensor, paddings, mode="CONSTANT", constant_values=0, name=None):
    """As ``tf.pad``: ``paddings`` is ``[[before, after], ...]`` per axis; ``mode`` is ``"CONSTANT"``,
    ``"REFLECT"`` or ``"SYMMETRIC"`` (any case)."""
    mode = str(mode).lower()
    if mode not in ("constant", "reflect", "symmetric"):
        raise ValueError(f"Value of argument `mode` expected to be one of \"CONSTANT\", \"REFLECT\", or "
                         f"\"SYMMETRIC\". Received `mode` = {mode.upper()}")
    widths = tuple(_ints(p) for p in (paddings.tolist() if isinstance(paddings, torch.Tensor) else paddings))
    x = convert_to_tensor(tensor)
    if mode == "symmetric":
        return _symmetric_pad(x, widths)
    fill_value = constant_values if mode == "constant" else None
    return ops.pad(x, widths, mode=mode, constant_values=fill_value)


def _symmetric_pad(x, widths):
    # Keras's torch backend pads "symmetric" as "replicate" (edge values); TensorFlow mirrors the
    # edge, including it: [1 2 3] padded by 2 is [2 1 1 2 3 3 2].
    for axis, (before, after) in enumerate(widths):
        length = x.shape[axis]
        if before > length or after > length:
            raise ValueError(f"Paddings must be no greater than the dimension size: {before}, {after} "
                             f"greater than {length}")
        head = torch.flip(x.narrow(axis, 0, before), dims=(axis,))
        tail = torch.flip(x.narrow(axis, length - after, after), dims=(axis,))
        x = torch.cat([head, x, tail], dim=axis)
    return x


@eager_result
def split(value, num_or_size_splits, axis=0, num=None, name="split"):
    """As ``tf.split``: an int splits into that many equal parts; a list gives the sizes (one may be -1)."""
    x = convert_to_tensor(value)
    axis = int(axis)
    if isinstance(num_or_size_splits, (int, np.integer)):
        parts = int(num_or_size_splits)
        if x.shape[axis] % parts:
            raise ValueError(f"Dimension {axis} of size {x.shape[axis]} cannot be split into {parts} equal parts.")
        return list(ops.split(x, parts, axis=axis))
    sizes = list(_ints(num_or_size_splits))
    if sizes.count(-1) == 1:
        sizes[sizes.index(-1)] = x.shape[axis] - (sum(sizes) + 1)
    if sum(sizes) != x.shape[axis] or min(sizes) < 0:
        raise ValueError(f"The sizes {list(_ints(num_or_size_splits))} do not add up to dimension {axis} "
                         f"of size {x.shape[axis]}.")
    return list(torch.split(x, sizes, dim=axis))


def size(input, out_type=int32, name=None):  # noqa: A002
    """As ``tf.size``: the number of elements as a scalar int32 tensor."""
    return torch.tensor(int(np.prod(ops.shape(input))), dtype=as_dtype(out_type).torch_dtype)


def rank(input, name=None):  # noqa: A002
    """As ``tf.rank``: the number of axes as a scalar int32 tensor."""
    return torch.tensor(len(ops.shape(input)), dtype=torch.int32)


@eager_result
def boolean_mask(tensor, mask, axis=None, name="boolean_mask"):
    """As ``tf.boolean_mask``: the entries of ``tensor`` where ``mask`` is true. ``mask``'s K axes
    match ``tensor``'s axes ``axis .. axis+K-1`` (``axis`` defaults to 0), which become one axis."""
    x = convert_to_tensor(tensor)
    mask = convert_to_tensor(mask)
    axis = 0 if axis is None else int(axis) % x.ndim
    masked_shape = tuple(x.shape[axis:axis + mask.ndim])
    if mask.ndim == 0 or masked_shape != tuple(mask.shape):
        raise ValueError(f"Shapes {tuple(x.shape)} and {tuple(mask.shape)} are incompatible: the mask must "
                         f"match the tensor's shape from axis {axis}.")
    flat = ops.reshape(x, tuple(x.shape[:axis]) + (-1,) + tuple(x.shape[axis + mask.ndim:]))
    where_true = torch.nonzero(mask.reshape(-1).to(torch.bool)).reshape(-1).to(flat.device)
    return torch.index_select(flat, axis, where_true)


@eager_result
def where(condition, x=None, y=None, name=None):
    """As ``tf.where``: with ``x`` and ``y``, ``x`` where ``condition`` is true and ``y`` elsewhere
    (broadcast together); with neither, the coordinates of the true entries as int64 ``[n, rank]``."""
    condition = convert_to_tensor(condition)
    if x is None and y is None:
        return torch.nonzero(condition.to(torch.bool))
    if x is None or y is None:
        raise ValueError("x and y must both be non-None or both be None.")
    return ops.where(condition, convert_to_tensor(x), convert_to_tensor(y))


def _descending(direction) -> bool:
    if direction not in ("ASCENDING", "DESCENDING"):
        raise ValueError(f"`direction` should be one of {{'ASCENDING', 'DESCENDING'}}. Received: {direction!r}")
    return direction == "DESCENDING"


@eager_result
def sort(values, axis=-1, direction="ASCENDING", name=None):
    """As ``tf.sort``: along the last axis unless ``axis`` says."""
    return torch.sort(convert_to_tensor(values), dim=int(axis), descending=_descending(direction))[0]


def argsort(values, axis=-1, direction="ASCENDING", stable=False, name=None):
    """As ``tf.argsort``: int32 indices; equal values keep their order in either direction, as
    TensorFlow's (built on ``top_k``) does."""
    order = torch.sort(convert_to_tensor(values), dim=int(axis), descending=_descending(direction), stable=True)[1]
    return order.to(torch.int32)


Unique = collections.namedtuple("Unique", ["y", "idx"])


def unique(x, out_idx=int32, name=None):
    """As ``tf.unique`` of a 1-D tensor: ``y`` holds the distinct values in order of first appearance
    (not sorted), ``idx`` each element's position in ``y``."""
    x = convert_to_tensor(x)
    if x.ndim != 1:
        raise ValueError(f"tf.unique expects a 1-D tensor; got shape {tuple(x.shape)}.")
    values, inverse = torch.unique(x, sorted=True, return_inverse=True)
    positions = torch.arange(x.shape[0], device=x.device)
    first_seen = torch.full((values.shape[0],), x.shape[0], device=x.device).scatter_reduce(
        0, inverse, positions, reduce="amin")
    order = torch.argsort(first_seen)
    rank_of = torch.empty_like(order)
    rank_of[order] = torch.arange(order.shape[0], device=x.device)
    return Unique(values[order], rank_of[inverse].to(as_dtype(out_idx).torch_dtype))
