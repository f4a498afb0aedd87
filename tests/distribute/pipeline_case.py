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


# A Keras model in a pipeline: shuffle=False, since the engine's epoch order is drawn per run
# (a pipelined fit and one process's Keras fit draw theirs differently).
KERAS_FIT = dict(epochs=2, batch_size=16, validation_split=0.1, shuffle=False)


def keras_model(kind: str):
    """The same chain as a keras.Sequential or a functional model, compiled with Adam."""
    from hpctrain import keras

    keras.utils.set_random_seed(0)
    stack = [keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(8, activation="relu"),
             keras.layers.Dense(CLASSES, activation="softmax")]
    if kind == "sequential":
        model = keras.Sequential([keras.Input((FEATURES,)), *stack])
    else:
        inputs = x = keras.Input((FEATURES,))
        for layer in stack:
            x = layer(x)
        model = keras.Model(inputs, x)
    return model


def compile_keras(model):
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
