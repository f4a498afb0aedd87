"""``tf.print`` (tensors printed by value, as TensorFlow prints them) and ``tf.get_logger``."""

from __future__ import annotations

import logging
import sys

import numpy as np
import torch


def _float_text(value, digits: int, round_trip_digits: int, kind) -> str:
    # TensorFlow's float formatting: %g with the type's decimal digits, more where that does not
    # read back as the same value.
    text = "%.*g" % (digits, value)
    if kind(text) != kind(value):
        text = "%.*g" % (round_trip_digits, value)
    return text


def _element_text(value) -> str:
    if isinstance(value, (np.floating, float)):
        if isinstance(value, np.float64) or type(value) is float:
            return _float_text(float(value), 15, 17, float)
        return _float_text(float(value), 6, 9, np.float32)
    if isinstance(value, np.bool_):
        return str(int(value))
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _array_text(array: np.ndarray, summarize: int, indent: int = 0) -> str:
    if array.ndim == 0:
        return _element_text(array[()])
    count = array.shape[0]
    if 0 <= summarize < count and count > 2 * summarize:
        shown = [*range(summarize), None, *range(count - summarize, count)]
    else:
        shown = list(range(count))
    parts = ["..." if i is None else _array_text(array[i], summarize, indent + 1) for i in shown]
    if array.ndim == 1:
        return "[" + " ".join(parts) + "]"
    separator = "\n" * (array.ndim - 1) + " " * (indent + 1)
    return "[" + separator.join(parts) + "]"


def _text(value, summarize: int) -> str:
    if isinstance(value, torch.Tensor) or hasattr(value, "numpy") and not isinstance(value, type):
        value = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value.numpy())
    if isinstance(value, np.ndarray):
        return _array_text(value, summarize)
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_text(v, summarize) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_text(v, summarize)}" for k, v in value.items()) + "}"
    return str(value)


def print(*inputs, output_stream=None, summarize=3, sep=" ", end="\n", name=None):  # noqa: A001
    """As ``tf.print``: tensors (and variables, NumPy arrays) printed by value, ``[1 2 3]``, with at
    most ``summarize`` entries (default 3) at each end of an axis (-1: all), to standard error unless
    ``output_stream`` is another stream or a ``"file://PATH"`` to append to."""
    if output_stream is None:
        output_stream = sys.stderr  # looked up at each call, so a redirected sys.stderr is used
    line = sep.join(_text(value, int(summarize)) for value in inputs) + end
    if isinstance(output_stream, str):
        if not output_stream.startswith("file://"):
            raise ValueError(f"Unsupported output stream {output_stream!r}: give a stream (sys.stdout, "
                             "sys.stderr) or 'file://PATH'.")
        with open(output_stream.removeprefix("file://"), "a", encoding="utf-8") as file:
            file.write(line)
        return None
    output_stream.write(line)
    return None


def get_logger() -> logging.Logger:
    """As ``tf.get_logger``: the logger named ``"tensorflow"``."""
    return logging.getLogger("tensorflow")
