"""Callbacks that make one spawned replica fail, for the local-spawn tests (importable by replicas)."""

import os
import signal

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
