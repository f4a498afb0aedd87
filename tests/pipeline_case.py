"""The data and native network that the pipeline tests train, in one process or in stages."""

import numpy as np
import torch

ROWS, FEATURES, CLASSES = 100, 12, 4
FIT = dict(epochs=2, batch_size=16, validation_split=0.1)  # 90 training rows: a last batch of 10


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(ROWS, FEATURES)).astype("float32"), rng.integers(0, CLASSES, size=ROWS)


def native_network():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.Tanh(), torch.nn.Linear(16, CLASSES))


NATIVE = dict(loss=torch.nn.CrossEntropyLoss(), optimizer="adam", metrics=["accuracy"])
