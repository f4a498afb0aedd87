"""Readers for data set files on disk (offline; Keras's own loaders download)."""

from hpctrain.datasets import mnist
from hpctrain.datasets.idx import read_idx

__all__ = ["mnist", "read_idx"]
