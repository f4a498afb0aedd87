"""The elements a ``tf.data.Dataset`` passes along: nested tuples and dicts of NumPy arrays.

Inside the pipeline every leaf is a NumPy array; map functions and iteration see torch tensors
(as TensorFlow's see tensors, with ``.numpy()``), and what a map function returns is brought back
to NumPy.
"""

from __future__ import annotations

import numpy as np
import torch


def is_structure(value) -> bool:
    return isinstance(value, (tuple, dict))


def leaf_to_numpy(value) -> np.ndarray:
    """A tensor, array or Python value as a NumPy array; Python floats and ints become float32 and
    int32 as in ``tf.constant`` (NumPy arrays keep their dtype)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "__array__") and not isinstance(value, (list, tuple)):
        return np.asarray(value)
    array = np.asarray(value)
    if array.dtype == np.float64:
        return array.astype(np.float32)
    if array.dtype == np.int64:
        return array.astype(np.int32)
    return array


def to_numpy(value, lists_are_tuples: bool = False):
    """A nested structure as NumPy leaves. Tuples and dicts are structure; a list is one tensor
    (as in ``from_tensor_slices``), or a tuple where ``lists_are_tuples`` (a map function's result)."""
    if isinstance(value, list) and lists_are_tuples:
        value = tuple(value)
    if isinstance(value, tuple):
        return tuple(to_numpy(v, lists_are_tuples) for v in value)
    if isinstance(value, dict):
        return {k: to_numpy(v, lists_are_tuples) for k, v in value.items()}
    return leaf_to_numpy(value)


def cast_like(element, dtypes):
    """Each leaf of ``element`` cast to the dtype at the same place in ``dtypes`` (or to ``dtypes``
    itself where it is a single dtype)."""
    if isinstance(element, tuple) and isinstance(dtypes, (tuple, list)):
        return tuple(cast_like(e, d) for e, d in zip(element, dtypes))
    if isinstance(element, dict) and isinstance(dtypes, dict):
        return {k: cast_like(v, dtypes[k]) for k, v in element.items()}
    return map_leaves(lambda leaf: leaf.astype(np.float32 if str(dtypes) == "bfloat16" else str(dtypes)), element)


def map_leaves(function, element):
    if isinstance(element, tuple):
        return tuple(map_leaves(function, v) for v in element)
    if isinstance(element, dict):
        return {k: map_leaves(function, v) for k, v in element.items()}
    return function(element)


def leaves(element) -> list:
    if isinstance(element, tuple):
        return [leaf for v in element for leaf in leaves(v)]
    if isinstance(element, dict):
        return [leaf for v in element.values() for leaf in leaves(v)]
    return [element]


def _leaf_to_torch(array):
    array = np.asarray(array)
    if array.dtype.kind in "biuf" and array.dtype != np.uint16 and array.dtype != np.uint32:
        return torch.from_numpy(array if array.flags.c_contiguous else array.copy(order="C"))
    return array  # strings and other dtypes torch has no tensor for stay NumPy


def to_torch(element):
    """An element as torch tensors (what iteration and map functions see)."""
    return map_leaves(_leaf_to_torch, element)


def num_slices(element) -> int:
    """The common first dimension of the leaves (``from_tensor_slices`` slices along it)."""
    sizes = {leaf.shape[0] if leaf.ndim else None for leaf in leaves(element)}
    if None in sizes:
        raise ValueError("from_tensor_slices needs tensors of rank 1 or more to slice; got a scalar.")
    if len(sizes) != 1:
        raise ValueError(f"from_tensor_slices needs tensors with the same first dimension; got {sorted(sizes)}.")
    return sizes.pop()


def slice_at(element, index: int):
    return map_leaves(lambda leaf: leaf[index, ...], element)  # a 0-d array, not a NumPy scalar


def stack(elements: list):
    """Elements with the same structure, stacked along a new first axis (one batch)."""
    first = elements[0]
    if isinstance(first, tuple):
        return tuple(stack([e[i] for e in elements]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: stack([e[k] for e in elements]) for k in first}
    return np.stack(elements)


def concatenate(batches: list):
    """Batches with the same structure, joined along their first axis."""
    first = batches[0]
    if isinstance(first, tuple):
        return tuple(concatenate([b[i] for b in batches]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: concatenate([b[k] for b in batches]) for k in first}
    return np.concatenate(batches)


def call_with_element(function, element):
    """``function(*element)`` for a tuple (TensorFlow passes the components as arguments), else
    ``function(element)``; the element is given as torch tensors."""
    values = to_torch(element)
    return function(*values) if isinstance(values, tuple) else function(values)
