"""Readers for data set file formats."""

from hpctrain.datasets.idx import read_idx

__all__ = ["read_idx"]
