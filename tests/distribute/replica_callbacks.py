"""Callbacks for the local-spawn tests (importable by replicas): one makes a replica fail, one
records what each replica ends with."""

import os
import signal

import numpy as np

from hpctrain.keras.callbacks import Callback


class FailOnRank(Callback):
    """In the second epoch, rank ``rank`` raises (``how="raise"``) or is killed (``how="kill"``)."""

    def __init__(self, rank: int, how: str):
        super().__init__()
        self.rank, self.how = rank, how

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1 and self.model.plan.rank == self.rank:
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"replica {self.rank} was told to fail")


class SaveWeightsPerRank(Callback):
    """At the end of training, each replica writes its weights to ``{prefix}{rank}.npz``."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def on_train_end(self, logs=None):
        np.savez(f"{self.prefix}{self.model.plan.rank}.npz", *self.model.get_weights())
