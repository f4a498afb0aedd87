"""Keras-compatible front end: the module paths of ``keras`` / ``tensorflow.keras``."""

from hpctrain.keras import (activations, callbacks, datasets, functional, initializers, layers, losses, metrics,
                            models, optimizers, regularizers, utils)
from hpctrain.keras.layers import Input
from hpctrain.keras.models import Model, Sequential

__all__ = ["Input", "Model", "Sequential", "activations", "callbacks", "datasets", "initializers", "layers",
           "losses", "metrics", "models", "optimizers", "regularizers", "utils"]
