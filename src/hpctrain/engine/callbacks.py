"""Callbacks with Keras's hooks: ``History``, ``EarlyStopping``, ``LambdaCallback``,
``LearningRateScheduler``, ``ReduceLROnPlateau``; those that write files (``CSVLogger``,
``ModelCheckpoint``, ``TensorBoard``, ``BackupAndRestore``) live in
:mod:`hpctrain.engine.file_callbacks` and are importable from here too. Only rank 0 prints or
writes files.

Callbacks see ``self.model``: the Keras model for the Keras front end, the ``Trainer`` for the
native API. Both offer ``stop_training``, ``get_weights`` and ``set_weights``.
"""

from __future__ import annotations

import numpy as np

from hpctrain.arguments import is_number
from hpctrain.engine.callback_base import (
    _HOOKS,
    Callback,
    CallbackList,
    is_chief,
    learning_rate_of,
    register_callback_base,
    set_learning_rate,
    sounds_like_a_score,
)
from hpctrain.engine.file_callbacks import (
    BackupAndRestore,
    CSVLogger,
    ModelCheckpoint,
    TensorBoard,
)
from hpctrain.errors import ConfigError, warn


class History(Callback):
    """Records each epoch's logs: ``history.history["loss"]`` and so on, ``history.epoch``."""

    def __init__(self):
        super().__init__()
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def on_train_begin(self, logs=None):
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)

    # A resumed fit continues the History of the run it resumes.
    def checkpoint_state(self) -> dict:
        return {"history": self.history, "epoch": self.epoch}

    def load_checkpoint_state(self, state: dict) -> None:
        self.history = {key: list(values) for key, values in state["history"].items()}
        self.epoch = list(state["epoch"])


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs (Keras's rules)."""

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        super().__init__()
        if mode not in ("auto", "min", "max"):
            raise ConfigError(f"EarlyStopping mode must be 'auto', 'min' or 'max'; got {mode!r}.")
        self.monitor = monitor
        self.min_delta = abs(min_delta)
        self.patience = patience
        self.verbose = verbose
        self.baseline = baseline
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self.higher_is_better = mode == "max" or (mode == "auto" and sounds_like_a_score(monitor))
        self.stopped_epoch = 0

    def on_train_begin(self, logs=None):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = -np.inf if self.higher_is_better else np.inf
        self.best_weights = None
        self.best_epoch = 0

    def _improves_on(self, value: float, reference: float) -> bool:
        if self.higher_is_better:
            return value - self.min_delta > reference
        return value + self.min_delta < reference

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            warn(
                f"EarlyStopping monitors {self.monitor!r}, which is not in the logs "
                f"(available: {', '.join(sorted(logs or {}))}); it does nothing this epoch."
            )
            return
        if epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()
        self.wait += 1
        if self._improves_on(value, self.best):
            self.best, self.best_epoch = value, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            # A baseline keeps the patience running until the monitor beats it.
            if self.baseline is None or self._improves_on(value, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    _STATE = ("wait", "stopped_epoch", "best", "best_weights", "best_epoch")

    def checkpoint_state(self) -> dict:
        return {name: getattr(self, name) for name in self._STATE}

    def load_checkpoint_state(self, state: dict) -> None:
        for name in self._STATE:
            setattr(self, name, state[name])

    def on_train_end(self, logs=None):
        if self.stopped_epoch and self.verbose and is_chief(self):
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose and is_chief(self):
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


class LambdaCallback(Callback):
    """A callback from functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``."""

    def __init__(self, **hooks):
        super().__init__()
        unknown = sorted(set(hooks) - set(_HOOKS) - {"on_batch_begin", "on_batch_end"})
        if unknown:
            raise ConfigError(f"LambdaCallback got unknown hook(s) {', '.join(unknown)}; "
                              f"hooks are {', '.join(_HOOKS)}.")
        for name, function in hooks.items():
            if function is not None:
                setattr(self, name, function)


class LearningRateScheduler(Callback):
    """Sets the learning rate at each epoch's start to ``schedule(epoch, lr)`` (or ``schedule(epoch)``)."""

    def __init__(self, schedule, verbose=0):
        super().__init__()
        self.schedule = schedule
        self.verbose = verbose

    def on_epoch_begin(self, epoch, logs=None):
        current = learning_rate_of(self.model)
        try:
            rate = self.schedule(epoch, current)
        except TypeError:  # the one-argument form
            rate = self.schedule(epoch)
        if not is_number(rate) or rate != rate:
            raise ConfigError(f"the learning-rate schedule returned {rate!r} for epoch {epoch}; it must return a "
                              "number.")
        set_learning_rate(self.model, float(rate))
        if self.verbose and is_chief(self):
            print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {float(rate)}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = learning_rate_of(self.model)


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved for ``patience`` epochs."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0):
        super().__init__()
        if factor >= 1.0:
            raise ConfigError(f"ReduceLROnPlateau needs factor < 1; got {factor}.")
        if mode not in ("auto", "min", "max"):
            raise ConfigError(f"ReduceLROnPlateau mode must be 'auto', 'min' or 'max'; got {mode!r}.")
        self.monitor, self.factor, self.patience, self.verbose = monitor, factor, patience, verbose
        self.min_delta, self.cooldown, self.min_lr = min_delta, cooldown, min_lr
        self.higher_is_better = mode == "max" or (mode == "auto" and sounds_like_a_score(monitor))

    def on_train_begin(self, logs=None):
        self.wait = 0
        self.cooldown_counter = 0
        self.best = -np.inf if self.higher_is_better else np.inf

    def _improved(self, value: float) -> bool:
        if self.higher_is_better:
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def checkpoint_state(self) -> dict:
        return {"wait": self.wait, "cooldown_counter": self.cooldown_counter, "best": self.best}

    def load_checkpoint_state(self, state: dict) -> None:
        self.wait, self.cooldown_counter, self.best = state["wait"], state["cooldown_counter"], state["best"]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs["learning_rate"] = learning_rate_of(self.model)
        value = logs.get(self.monitor)
        if value is None:
            warn(f"ReduceLROnPlateau monitors {self.monitor!r}, which is not in the logs "
                 f"(available: {', '.join(sorted(logs))}); it does nothing this epoch.")
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(value):
            self.best, self.wait = value, 0
            return
        if self.cooldown_counter > 0:
            return
        self.wait += 1
        if self.wait >= self.patience:
            old = learning_rate_of(self.model)
            if old > self.min_lr:
                new = max(old * self.factor, self.min_lr)
                set_learning_rate(self.model, new)
                if self.verbose and is_chief(self):
                    print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new}.")
                self.cooldown_counter = self.cooldown
                self.wait = 0


__all__ = [
    "BackupAndRestore",
    "CSVLogger",
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "History",
    "LambdaCallback",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "ReduceLROnPlateau",
    "TensorBoard",
    "is_chief",
    "register_callback_base",
]
