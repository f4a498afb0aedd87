"""One process's training: fit -> epoch -> step; evaluation, prediction, metrics, callbacks."""

from hpctrain.engine.callbacks import Callback, EarlyStopping, History
from hpctrain.engine.trainer import Trainer

__all__ = ["Callback", "EarlyStopping", "History", "Trainer"]
