"""``mnist.load_data()``: ``(x_train, y_train), (x_test, y_test)`` as uint8 images and labels.

Reads the official IDX files (``.gz`` or not) from a folder, or Keras's ``mnist.npz``: from the
path given, else from Keras's cache folder (``~/.keras/datasets``, or ``$KERAS_HOME/datasets``).
It downloads Keras's ``mnist.npz`` into that cache only when allowed — ``download=True``, or the
environment variable ``HPCTRAIN_DOWNLOAD_DATASETS=1`` for unchanged Keras scripts — and checks
its SHA-256 before keeping it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request

import numpy as np

from hpctrain.datasets.idx import read_idx
from hpctrain.errors import InputError

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
# Keras's own copy and its checksum (keras.datasets.mnist).
MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
DOWNLOAD_ENV = "HPCTRAIN_DOWNLOAD_DATASETS"
DOWNLOAD_TIMEOUT_SECONDS = 60


def keras_cache_dir() -> str:
    return os.path.join(os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras")), "datasets")


def load_data(path: str | None = None, download: bool | None = None):
    """``path``: a folder with the IDX files, an ``.npz``, or (as in Keras) a name inside the cache folder.

    ``download``: fetch Keras's ``mnist.npz`` into the cache if nothing is found; ``None`` reads
    ``HPCTRAIN_DOWNLOAD_DATASETS`` (``1`` allows it). Never downloads when the files are there.
    """
    candidates = _candidates(path)
    for candidate in candidates:
        arrays = _load(candidate)
        if arrays is not None:
            return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])
    if download is None:
        download = os.environ.get(DOWNLOAD_ENV, "") == "1"
    target = os.path.join(keras_cache_dir(), "mnist.npz")
    if not download:
        raise InputError(_not_found_message(candidates, target))
    arrays = _load(_download(target, candidates))
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def _candidates(path) -> list[str]:
    cache = keras_cache_dir()
    if path is None:
        return [os.path.join(cache, "mnist.npz"), cache]
    path = os.fspath(path)
    in_cache = os.path.join(cache, path)
    return [path] if os.path.isabs(path) or in_cache == path else [path, in_cache]


def _load(candidate: str):
    return _load_npz(candidate) if str(candidate).endswith(".npz") else _load_idx_folder(candidate)


def _not_found_message(candidates, target: str) -> str:
    return (
        f"MNIST was not found at {', '.join(candidates)}. Put the four IDX files "
        f"({', '.join(f + '[.gz]' for f in IDX_FILES.values())}) in one of those folders, or Keras's mnist.npz "
        f"at {target}, or pass load_data(path=...) pointing at them. To let hpctrain download mnist.npz "
        f"({MNIST_URL}) into {os.path.dirname(target)}, call load_data(download=True) or set {DOWNLOAD_ENV}=1."
    )


def _download(target: str, candidates) -> str:
    """Fetch into a temporary file next to ``target``, check the SHA-256, then rename: a broken or
    interrupted download never stands under the final name."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=os.path.dirname(target), suffix=".part")
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(MNIST_URL, timeout=DOWNLOAD_TIMEOUT_SECONDS) as r:
            for chunk in iter(lambda: r.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != MNIST_SHA256:
            raise InputError(f"the download from {MNIST_URL} has SHA-256 {digest.hexdigest()}, not Keras's "
                             f"{MNIST_SHA256}; it was not kept. {_not_found_message(candidates, target)}")
        os.replace(partial, target)
        return target
    except (urllib.error.URLError, OSError) as exc:
        raise InputError(f"could not download MNIST from {MNIST_URL} ({exc}); this machine may be offline. "
                         f"{_not_found_message(candidates, target)}") from exc
    finally:
        if os.path.exists(partial):
            os.remove(partial)


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
