"""A training run for the crash tests: python resume_program.py OUT BACKUP_DIR [DIE_ONCE_MARKER].

An MNIST-sized MLP (784 -> 128 -> 10, Adam) on synthetic data, 3 epochs, backed up every 7 steps
(saves fall mid-epoch) by the engine's BackupAndRestore (Keras's own is epoch-granular). Each
step sleeps 15 ms in a batch-begin hook (no host sync), so a test can kill it mid-run. Rank 0 writes the final weights and History to OUT (.npz and .json).
With DIE_ONCE_MARKER, rank 1 kills itself with SIGKILL at global step 50 unless the marker exists
(it creates it first): one worker dies once, as in the elastic test.
"""

import json
import os
import signal
import sys
import time

import numpy as np

import hpctrain as tf
from hpctrain.engine.callbacks import BackupAndRestore  # the engine's: exact, mid-epoch resume
from hpctrain.keras import Input
from hpctrain.keras.callbacks import Callback
from hpctrain.keras.layers import Dense
from hpctrain.keras.models import Sequential

out, backup_dir = sys.argv[1:3]
die_once_marker = sys.argv[3] if len(sys.argv) > 3 else None


class SlowSteps(Callback):
    def __init__(self, rank):
        super().__init__()
        self.rank, self.steps = rank, 0

    def on_train_batch_begin(self, batch, logs=None):
        self.steps += 1
        if die_once_marker and self.rank == 1 and self.steps == 50 and not os.path.exists(die_once_marker):
            open(die_once_marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.015)


tf.keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.random(size=(1200, 784), dtype=np.float32)
y = rng.integers(0, 10, size=1200)
distributed = "WORLD_SIZE" in os.environ
strategy = tf.distribute.MirroredStrategy() if distributed else None
with strategy.scope() if distributed else open(os.devnull) as _:
    model = Sequential([Input((784,)), Dense(128, activation="relu"), Dense(10, activation="softmax")])
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], plan=None if distributed else tf.make_plan(threads=1))
rank = strategy.plan().rank if distributed else 0
history = model.fit(x, y, epochs=3, batch_size=32, validation_split=0.1, verbose=0,
                    callbacks=[BackupAndRestore(backup_dir, save_freq=7), SlowSteps(rank)])
if rank == 0:
    np.savez(out, *model.get_weights())
    with open(out + ".json", "w") as f:
        json.dump({"history": history.history, "world_size": model.plan.world_size}, f)
