"""Keras utilities: reproducible seeds and one-hot labels."""

from __future__ import annotations

import random

import numpy as np
import torch

from hpctrain.errors import InputError


def set_random_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA); ``fit``'s shuffle order follows from torch's."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def to_categorical(x, num_classes=None, dtype="float32") -> np.ndarray:
    """One-hot rows from integer class labels, shaped (N,) or (N, 1) as Keras accepts them."""
    labels = np.asarray(x)
    if labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
        raise InputError("to_categorical needs whole-number class labels; got fractional values.")
    labels = labels.astype(np.int64)
    if labels.ndim > 1 and labels.shape[-1] == 1:
        labels = labels.reshape(labels.shape[:-1])
    if labels.size and labels.min() < 0:
        raise InputError(f"to_categorical needs class labels >= 0; found {labels.min()}.")
    classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if labels.size and labels.max() >= classes:
        raise InputError(f"label {labels.max()} does not fit num_classes={classes}; labels must be < num_classes.")
    one_hot = np.zeros((*labels.shape, classes), dtype=dtype)
    np.put_along_axis(one_hot, labels[..., None], 1, axis=-1)
    return one_hot
