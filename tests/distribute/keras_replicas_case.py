"""A Keras model with BatchNormalization and Dropout, and what two data-parallel replicas of it
compute, computed in one process (the reference for the replica tests).

The replicas' definition, followed step by step: every replica continues the fitting process's torch
RNG (so each draws its own dropout masks, from its own copy of that stream, for its own rows, as
the engine draws them: hpctrain's native forward runs an unseeded Dropout with the engine's mask); takes
a contiguous share of every global batch; weights its mean loss by its share of the batch; the
gradients are summed over the replicas and every replica applies the same update. Batch
normalization normalizes each replica's rows by their own statistics and its moving statistics
follow that replica's rows; at each epoch's end they become their mean over the replicas.
"""

from unittest import mock

import numpy as np
import torch

from hpctrain import keras
from hpctrain.engine.dropout import dropout as engine_dropout

ROWS, FEATURES, CLASSES = 99, 12, 3  # the last global batch of 3 rows splits into 1 and 2
BATCH, EPOCHS, WORLD = 32, 2, 2


def data():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(ROWS, FEATURES)).astype("float32")
    y = (x @ rng.normal(size=(FEATURES, CLASSES))).argmax(1)
    return x, y


def build(optimizer="sgd"):
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.BatchNormalization(momentum=0.8), keras.layers.Dropout(0.3),
                              keras.layers.Dense(CLASSES, activation="softmax")])
    chosen = (keras.optimizers.SGD(learning_rate=0.1, momentum=0.9) if optimizer == "sgd"
              else keras.optimizers.Adam(learning_rate=0.01))
    model.compile(optimizer=chosen, loss="sparse_categorical_crossentropy")
    return model


def moving_statistics(model) -> list[np.ndarray]:
    return [v.numpy() for v in model.non_trainable_variables if "moving" in v.path]


def trainable_weights(model) -> list[np.ndarray]:
    return [v.numpy() for v in model.trainable_variables]


def _engine_mask(input, p=0.5, training=True, inplace=False):
    """Keras's unseeded dropout (``F.dropout``) drawing the engine's mask, as the replicas do."""
    return engine_dropout(input, p) if training else input


def reference_fit(model, x, y) -> None:
    """``model`` trained as WORLD replicas train it, in this process, with Keras's own loss and optimizer."""
    with mock.patch("torch.nn.functional.dropout", _engine_mask):
        _reference_fit(model, x, y)


def _reference_fit(model, x, y) -> None:
    statistics = [v for v in model.non_trainable_variables if "moving" in v.path]
    variables = model.trainable_variables
    streams = [torch.get_rng_state() for _ in range(WORLD)]
    kept = [_values(statistics) for _ in range(WORLD)]
    loss = keras.losses.SparseCategoricalCrossentropy()
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
    for epoch in range(EPOCHS):
        streams = _after_loader_draws(streams, LOADER_DRAWS_BEFORE_FIRST_EPOCH if epoch == 0 else LOADER_DRAWS_BETWEEN_EPOCHS)
        for start in range(0, ROWS, BATCH):
            rows = min(BATCH, ROWS - start)
            for rank in range(WORLD):
                first, last = start + rows * rank // WORLD, start + rows * (rank + 1) // WORLD
                torch.set_rng_state(streams[rank])
                _assign(statistics, kept[rank])
                output = model(inputs[first:last], training=True)
                (loss(labels[first:last], output) * ((last - first) / rows)).backward()
                streams[rank], kept[rank] = torch.get_rng_state(), _values(statistics)
            with torch.no_grad():
                model.optimizer.apply([v.value.grad for v in variables], variables)
            for v in variables:
                v.value.grad = None
        mean = [sum(parts) / WORLD for parts in zip(*kept)]
        kept = [[m.clone() for m in mean] for _ in range(WORLD)]
        _assign(statistics, mean)


# Keras's own data pipeline on torch draws from torch's RNG as it starts its DataLoaders, and
# hpctrain walks the same stream (keras/shuffle_order.py): even unshuffled, each replica's dropout
# masks come after those draws (two before the first epoch's batches, two between epochs).
LOADER_DRAWS_BEFORE_FIRST_EPOCH = 2
LOADER_DRAWS_BETWEEN_EPOCHS = 2


def _after_loader_draws(streams: list[torch.Tensor], count: int) -> list[torch.Tensor]:
    advanced = []
    for state in streams:
        torch.set_rng_state(state)
        for _ in range(count):
            torch.empty((), dtype=torch.int64).random_()
        advanced.append(torch.get_rng_state())
    return advanced


def _values(variables) -> list[torch.Tensor]:
    return [v.value.detach().clone() for v in variables]


def _assign(variables, values) -> None:
    for v, value in zip(variables, values):
        v.assign(value)


class KernelRowsHeld(keras.callbacks.Callback):
    """Logs how many rows of the first Dense kernel this replica holds between steps (all of them
    unless the weights are sharded); defined here, not in a test, so that replicas can import it."""

    def on_epoch_end(self, epoch, logs=None):
        from torch.distributed.tensor import DTensor

        from hpctrain.keras.session import session_of

        kernel = self.model.layers[0].kernel
        held = session_of(self.model).trainer.module.keras_model.torch_params[kernel.path]
        logs["kernel_rows_held"] = float((held.to_local() if isinstance(held, DTensor) else held).shape[0])
