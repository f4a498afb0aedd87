"""Importing the real Keras 3 on its PyTorch backend, or saying exactly why it cannot be done."""

from __future__ import annotations

import contextlib
import os
import sys

from hpctrain.errors import HpctrainError

# The Keras releases whose trainer, saving and variables the seam was tested against.
SUPPORTED_KERAS = ((3, 10), (3, 16))  # from 3.10 inclusive up to 3.16 exclusive


class KerasBackendError(HpctrainError, ImportError):
    """Keras is missing, outside the tested range, or already running on another backend."""


def import_keras():
    """``keras`` on the torch backend; selects the backend before Keras reads it."""
    already = sys.modules.get("keras")
    if already is None:
        chosen = os.environ.get("KERAS_BACKEND")
        if chosen not in (None, "", "torch"):
            raise KerasBackendError(
                f"KERAS_BACKEND is {chosen!r}; hpctrain trains Keras on its PyTorch backend. Unset "
                "KERAS_BACKEND or set it to 'torch' before running the program.")
        os.environ["KERAS_BACKEND"] = "torch"
    try:
        with _jax_hidden():
            import keras
    except ImportError as error:
        raise KerasBackendError(f"Keras 3 is not installed ({error}); pip install 'keras>=3.10,<3.16'.") from error
    backend = keras.config.backend()
    if backend != "torch":
        raise KerasBackendError(
            f"Keras was imported before hpctrain with the {backend!r} backend; hpctrain needs the 'torch' "
            "backend. Import hpctrain before keras, or set KERAS_BACKEND=torch.")
    _check_version(keras.__version__)
    return keras


@contextlib.contextmanager
def _jax_hidden():
    """JAX reads as not installed while Keras imports. Keras's Orbax checkpoint callback imports
    JAX at Keras's import wherever JAX is installed, though the torch backend never calls it: a
    second of start-up (``benchmarks/results/keras_front/end_to_end.json``). JAX stays importable
    afterwards, by the program or by Keras's JAX-only paths."""
    if "jax" in sys.modules:
        yield
        return
    sys.modules["jax"] = None  # an import of a module set to None raises ImportError
    try:
        yield
    finally:
        if sys.modules.get("jax", 0) is None:
            del sys.modules["jax"]


def _check_version(version: str) -> None:
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    low, high = SUPPORTED_KERAS
    if not (low <= parts < high):
        raise KerasBackendError(
            f"Keras {version} is installed; hpctrain is tested with Keras {low[0]}.{low[1]} up to (not "
            f"including) {high[0]}.{high[1]}. pip install 'keras>={low[0]}.{low[1]},<{high[0]}.{high[1]}'.")
