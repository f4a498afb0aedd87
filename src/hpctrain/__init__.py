"""hpctrain: train neural networks as fast as the hardware allows, with the simplicity of Keras.

``import hpctrain as tf`` gives ``tf.keras`` (the real Keras 3 on PyTorch, trained by hpctrain's
engine) and the TensorFlow names Keras tutorials use beside it (:mod:`hpctrain.tfcompat`).
PyTorch users train any ``torch.nn.Module`` with :class:`Trainer`.

Everything is imported on first use: ``import hpctrain.engine`` does not pay for Keras.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = {"keras", "distribute", "errors", "engine", "hardware", "tfcompat", "datasets"}
_ENGINE_NAMES = {"Trainer": "hpctrain.engine", "Plan": "hpctrain.hardware", "make_plan": "hpctrain.hardware"}

__all__ = ["Plan", "Trainer", "__version__", "distribute", "errors", "keras", "make_plan"]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"hpctrain.{name}")
    if name in _ENGINE_NAMES:
        return getattr(importlib.import_module(_ENGINE_NAMES[name]), name)
    if name.startswith("_"):
        raise AttributeError(f"module 'hpctrain' has no attribute {name!r}")
    # The TensorFlow surface (tf.one_hot, tf.nn.relu, tf.data.Dataset, ...), or an error naming
    # the keras.ops / torch equivalent.
    return importlib.import_module("hpctrain.tfcompat").lookup(name)
