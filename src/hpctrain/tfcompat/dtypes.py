"""TensorFlow's dtype names (``tf.float32`` ...) as Keras dtype strings.

A :class:`DType` *is* its Keras dtype string (``tf.float32 == "float32"``), so Keras layers,
``keras.ops`` and NumPy accept it wherever they accept a dtype; it also carries the few
attributes TensorFlow's ``DType`` offers that tutorials read (``name``, ``is_floating``, ...).
"""

from __future__ import annotations

import numpy as np
import torch


class DType(str):
    """One dtype, e.g. ``tf.float32``; equal to its name."""

    __slots__ = ()

    @property
    def name(self) -> str:
        return str(self)

    @property
    def is_floating(self) -> bool:
        return self in ("float16", "bfloat16", "float32", "float64")

    @property
    def is_integer(self) -> bool:
        return self in ("int8", "int16", "int32", "int64", "uint8")

    @property
    def is_bool(self) -> bool:
        return self == "bool"

    @property
    def as_numpy_dtype(self):
        """The NumPy scalar type (bfloat16 has none in NumPy: float32 stands in)."""
        return np.float32 if self == "bfloat16" else np.dtype(str(self)).type

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, str(self))

    @property
    def size(self) -> int:
        return torch.empty((), dtype=self.torch_dtype).element_size()

    def __repr__(self) -> str:
        return f"tf.{self}"


float16 = DType("float16")
bfloat16 = DType("bfloat16")
float32 = DType("float32")
float64 = DType("float64")
int8 = DType("int8")
int16 = DType("int16")
int32 = DType("int32")
int64 = DType("int64")
uint8 = DType("uint8")
bool = DType("bool")  # noqa: A001 - TensorFlow's name
half, double = float16, float64

_BY_NAME = {str(d): d for d in (float16, bfloat16, float32, float64, int8, int16, int32, int64, uint8, bool)}


def as_dtype(value) -> DType:
    """``"float32"``, ``np.float32``, ``torch.float32`` or a DType -> the DType."""
    if isinstance(value, torch.dtype):
        name = str(value).removeprefix("torch.")
    elif isinstance(value, str):
        name = value
    else:
        name = np.dtype(value).name
    if name not in _BY_NAME:
        raise TypeError(f"Cannot convert {value!r} to a dtype: hpctrain knows {sorted(_BY_NAME)}.")
    return _BY_NAME[name]
