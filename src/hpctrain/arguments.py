"""What counts as a number in an argument: NumPy's scalars too (``np.int64`` from ``np.unique`` or
array arithmetic, ``np.float32`` from a computed rate), as Keras accepts them; never a bool."""

from __future__ import annotations

import numbers


def is_whole_number(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_"
