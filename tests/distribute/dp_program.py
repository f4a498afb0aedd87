"""A data-parallel Keras program for the tests: python dp_program.py OUT OPTIMIZER EXECUTOR [KILL_RANK].

Started on its own it trains one replica; under hpctrain launch / torchrun, one replica per process.
Rank 0 writes the weights, predictions, History and evaluate() result to OUT (.npz and .json).
"""

import json
import os
import signal
import sys

import numpy as np

import hpctrain as tf
from hpctrain.keras import Input, optimizers
from hpctrain.keras.callbacks import Callback
from hpctrain.keras.layers import Dense
from hpctrain.keras.models import Sequential

out, optimizer_name, executor = sys.argv[1:4]
kill_rank = int(sys.argv[4]) if len(sys.argv) > 4 else None


class DieMidEpoch(Callback):
    """Kills this process with SIGKILL in the second epoch, as a crashed or preempted worker."""

    def on_train_batch_begin(self, batch, logs=None):
        if self.params["epochs"] and batch == 3 and getattr(self, "epoch", 0) == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch


tf.keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.normal(size=(203, 12)).astype("float32")  # 203 rows, batch 20: an uneven last batch
y = rng.integers(0, 4, size=203)
strategy = tf.distribute.MirroredStrategy()
with strategy.scope():
    model = Sequential([Input((12,)), Dense(16, activation="tanh"), Dense(4, activation="softmax")])
    optimizer = optimizers.Adam(0.01) if optimizer_name == "adam" else optimizers.SGD(0.1, momentum=0.9)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  run_eagerly=executor == "autograd")
rank = strategy.plan().rank
callbacks = [DieMidEpoch()] if kill_rank == rank else []
history = model.fit(x, y, epochs=4, batch_size=20, validation_split=0.1, verbose=2, callbacks=callbacks)
evaluation = model.evaluate(x, y, verbose=0)
predictions = model.predict(x, verbose=0)
if rank == 0:
    np.savez(out, *model.get_weights(), predictions=predictions)
    with open(out + ".json", "w") as f:
        json.dump({"history": history.history, "evaluate": evaluation, "replicas": strategy.num_replicas_in_sync,
                   "executor": model.plan.executor, "world_size": model.plan.world_size}, f)
