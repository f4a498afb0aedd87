"""Keras callbacks; the engine runs them."""

from hpctrain.engine.callbacks import (Callback, CSVLogger, EarlyStopping, History, LambdaCallback,
                                       LearningRateScheduler, ModelCheckpoint, ReduceLROnPlateau, TensorBoard)

__all__ = ["CSVLogger", "Callback", "EarlyStopping", "History", "LambdaCallback", "LearningRateScheduler",
           "ModelCheckpoint", "ReduceLROnPlateau", "TensorBoard"]
