"""``mnist.load_data()``: ``(x_train, y_train), (x_test, y_test)`` as uint8 images and labels.

Reads the official IDX files (``.gz`` or not) from a folder, or Keras's ``mnist.npz``. hpctrain
does not download: it looks where it is told, then in Keras's cache folder.
"""

from __future__ import annotations

import os

import numpy as np

from hpctrain.datasets.idx import read_idx
from hpctrain.errors import InputError

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def keras_cache_dir() -> str:
    return os.path.join(os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras")), "datasets")


def load_data(path: str | None = None):
    candidates = [path] if path is not None else [os.path.join(keras_cache_dir(), "mnist.npz"), keras_cache_dir()]
    for candidate in candidates:
        arrays = _load_npz(candidate) if str(candidate).endswith(".npz") else _load_idx_folder(candidate)
        if arrays is not None:
            return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])
    raise InputError(
        f"MNIST was not found at {', '.join(map(str, candidates))}. Put the four IDX files "
        f"({', '.join(f + '[.gz]' for f in IDX_FILES.values())}) or Keras's mnist.npz there, or pass "
        "load_data(path=...) pointing at them; hpctrain does not download data."
    )


def _load_npz(path: str):
    if not os.path.isfile(path):
        return None
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in IDX_FILES}


def _load_idx_folder(folder: str):
    if not os.path.isdir(folder):
        return None
    found = {}
    for key, stem in IDX_FILES.items():
        for name in (stem + ".gz", stem):
            if os.path.isfile(os.path.join(folder, name)):
                found[key] = read_idx(os.path.join(folder, name))
                break
        else:
            return None
    return found
