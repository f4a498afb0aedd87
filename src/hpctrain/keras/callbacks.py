"""Keras callbacks; the engine runs them."""

from hpctrain.engine.callbacks import Callback, EarlyStopping, History

__all__ = ["Callback", "EarlyStopping", "History"]
