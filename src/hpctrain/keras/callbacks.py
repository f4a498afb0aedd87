"""Keras callbacks; the engine runs them."""

from hpctrain.engine.callbacks import (BackupAndRestore, Callback, CSVLogger, EarlyStopping, History, LambdaCallback,
                                       LearningRateScheduler, ModelCheckpoint, ReduceLROnPlateau, TensorBoard)

__all__ = ["BackupAndRestore", "CSVLogger", "Callback", "EarlyStopping", "History", "LambdaCallback",
           "LearningRateScheduler", "ModelCheckpoint", "ReduceLROnPlateau", "TensorBoard"]
