"""Keras's bundled data set loaders, reading local files."""

from hpctrain.keras.datasets import mnist

__all__ = ["mnist"]
