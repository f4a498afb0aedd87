"""MNIST from files on disk: ``(x_train, y_train), (x_test, y_test)`` as uint8 images and labels.

Keras's own ``keras.datasets.mnist.load_data()`` downloads ``mnist.npz``; this reads what is
already here, offline: a folder with the four official IDX files (``.gz`` or not), or an
``.npz`` with Keras's array names.
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


def load_data(path: str | os.PathLike):
    """``path``: a folder with the IDX files, or an ``.npz`` holding x_train, y_train, x_test, y_test."""
    path = os.fspath(path)
    if os.path.isdir(path):
        arrays = {key: read_idx(_idx_file(path, name)) for key, name in IDX_FILES.items()}
    elif os.path.isfile(path) and path.endswith(".npz"):
        with np.load(path) as archive:
            missing = sorted(set(IDX_FILES) - set(archive.files))
            if missing:
                raise InputError(f"{path} lacks the arrays {', '.join(missing)}; an MNIST .npz holds x_train, "
                                 "y_train, x_test and y_test.")
            arrays = {key: archive[key] for key in IDX_FILES}
    else:
        raise InputError(f"{path} is neither a folder of MNIST IDX files nor an .npz file; give the folder that "
                         f"holds {', '.join(IDX_FILES.values())} (optionally .gz).")
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def _idx_file(folder: str, name: str) -> str:
    for candidate in (name, name + ".gz"):
        full = os.path.join(folder, candidate)
        if os.path.isfile(full):
            return full
    raise InputError(f"{folder} has no {name} or {name}.gz; an MNIST folder holds the four IDX files "
                     f"{', '.join(IDX_FILES.values())}.")
