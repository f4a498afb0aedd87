"""``hpctrain run script.py [args ...]``: an unchanged TensorFlow/Keras script, run on hpctrain.

Before the script starts, ``import tensorflow`` is made to give :mod:`hpctrain` (the TensorFlow
names of :mod:`hpctrain.tfcompat`), ``import tensorflow.keras`` / ``from tensorflow import keras``
give ``hpctrain.keras``, and ``import keras`` gives the real Keras on its torch backend with
hpctrain's seam (``hpctrain.keras`` is imported first, which selects the backend and installs it).

The aliases are ``sys.modules`` entries: ``tensorflow``, ``tensorflow.keras``,
``tensorflow.keras.<m>`` for each of Keras's public modules, and the namespaces of the surface
(``tensorflow.nn``, ``tensorflow.data``, ``tensorflow.random``, ``tensorflow.config`` ...). A meta-path finder answers every
other ``tensorflow.*`` name (``tensorflow.python...``, ``tensorflow.io.gfile``, ``tensorflow.summary``)
with ModuleNotFoundError, as when TensorFlow is not installed, so that hpctrain's own package
files are never imported a second time under TensorFlow's name.

Keras itself probes for TensorFlow (``keras.src.utils.module_utils.tensorflow``, a lazy handle
whose ``available`` says whether ``import tensorflow`` works) and would take the alias for
TensorFlow. That handle is switched to report TensorFlow absent, so Keras keeps the code paths it
uses without TensorFlow (StringLookup, TextVectorization ... raise Keras's own ImportError).
TensorBoard's writer is likewise told to use its TensorFlow-free stub (``tensorboard.compat.notf``).
"""

from __future__ import annotations

import importlib.abc
import os
import runpy
import sys
import types

from hpctrain.errors import HpctrainError

_PREFIX = "tensorflow."


class ScriptNotFound(HpctrainError, FileNotFoundError):
    """The script to run does not exist."""


class _TensorFlowFinder(importlib.abc.MetaPathFinder):
    """Refuses the ``tensorflow.*`` modules that hpctrain does not stand in for."""

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith(_PREFIX):
            return None
        raise ModuleNotFoundError(
            f"No module named {fullname!r} (under hpctrain run, 'tensorflow' is hpctrain, which provides "
            "tf.keras and the names listed in docs/tf-compat.md)", name=fullname)


def _absent_handle_class(lazy_module_class):
    class TensorFlowAbsent(lazy_module_class):
        """Keras's lazy TensorFlow handle while 'tensorflow' names hpctrain: TensorFlow is absent."""

        @property
        def available(self):
            return False

        def initialize(self):
            raise ImportError(self.import_error_msg)

        def __getattr__(self, name):
            if name == "executing_eagerly":
                # keras.src.utils.backend_utils.in_tf_graph() asks this once 'tensorflow' is in
                # sys.modules; eager is the answer that means "not inside a TensorFlow graph".
                return lambda: True
            return super().__getattr__(name)

    return TensorFlowAbsent


def _hide_tensorflow_from_keras() -> None:
    from keras.src.utils import module_utils

    handle = module_utils.tensorflow
    if type(handle) is module_utils.LazyModule:
        handle.__class__ = _absent_handle_class(module_utils.LazyModule)
        handle.module = None
        handle._available = False


def install_tensorflow_alias() -> None:
    """Make ``import tensorflow`` (and ``tensorflow.keras...``) resolve to hpctrain; idempotent."""
    import hpctrain
    import hpctrain.keras

    _hide_tensorflow_from_keras()
    aliases = {"tensorflow": hpctrain, "tensorflow.keras": hpctrain.keras}
    for name, module in list(sys.modules.items()):
        if name.startswith("keras.") and not name.startswith(("keras.src", "keras._tf_keras")):
            aliases[_PREFIX + name] = module
    for name in ("nn", "math", "random", "data", "version", "dtypes", "saved_model", "distribute", "config"):
        aliases[_PREFIX + name] = hpctrain.tfcompat.lookup(name)
    sys.modules.update(aliases)
    if not any(isinstance(finder, _TensorFlowFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TensorFlowFinder())
    # TensorBoard's own switch for "use the stub, not TensorFlow" (it would otherwise import the alias).
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


def run_script(script: str, args=()) -> None:
    """Run ``script`` as ``__main__`` with ``sys.argv == [script, *args]`` and the aliases installed.

    The script's folder comes first on ``sys.path``, as with ``python script.py``. A ``SystemExit``
    raised by the script propagates (its exit status is the command's)."""
    if not os.path.isfile(script):
        raise ScriptNotFound(f"{script}: no such script (give the path of the Python file to run)")
    install_tensorflow_alias()
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
