"""Keras's own progress bar on the engine: ``keras.callbacks.ProgbarLogger`` prints, as in Keras's fit.

Keras's fit calls its ``ProgbarLogger`` after every batch, and the bar redraws at most every
``Progbar.interval`` seconds. Here the bar gets its pass's begin and end from the engine's
callbacks, exactly as Keras gives them, and the running logs in between from the engine's progress
feed (:func:`hpctrain.engine.progress.shown_by`) only when the bar would redraw: no per-batch hook,
so the steps keep the step loop they run with ``verbose=0``, and the metrics are read (a host
sync) only at those redraws.
"""

from __future__ import annotations

import contextlib
import inspect

import keras

from hpctrain.engine import progress
from hpctrain.errors import ConfigError

_VERBOSE_VALUES = ("auto", 0, 1, 2)


def keras_order(logs: dict | None) -> dict:
    """Logs in the order Keras's loop gives them: the training values by name, then the
    validation values by name (Keras sorts each pass's logs as it turns them into numbers)."""
    logs = logs or {}
    training = sorted(name for name in logs if not name.startswith("val_"))
    validation = sorted(name for name in logs if name.startswith("val_"))
    return {name: logs[name] for name in training + validation}


class KerasProgressBar(keras.callbacks.Callback):
    """Keras's ``ProgbarLogger`` (the one given in ``callbacks``, else a new one), with its begin and
    end hooks passed on and its batch hooks fed by the engine at the bar's refresh interval."""

    def __init__(self, logger: keras.callbacks.ProgbarLogger, verbose):
        super().__init__()
        self.logger, self.verbose = logger, verbose
        self._batch_hook = logger.on_train_batch_end

    # ---- the display the engine's passes feed ------------------------------------------------

    @property
    def refresh_seconds(self) -> float:
        bar = self.logger.progbar  # made as the pass begins; before that, the interval Keras's bars take
        return bar.interval if bar is not None else inspect.signature(keras.utils.Progbar).parameters[
            "interval"].default

    @property
    def refreshes(self) -> bool:
        """Keras's bar redraws before a pass ends only with ``verbose=1`` ("auto" is 1)."""
        return self.verbose in ("auto", 1)

    def refresh(self, done: int, logs: dict) -> None:
        self._batch_hook(done - 1, keras_order(logs))

    @contextlib.contextmanager
    def feeding(self):
        with progress.shown_by(self):
            yield

    # ---- Keras's hooks, passed on ------------------------------------------------------------

    def set_model(self, model):
        super().set_model(model)
        self.logger.set_model(model)

    def _pass_params(self) -> None:
        # Read as each pass begins: the engine counts the steps after the callbacks are set up.
        self.logger.set_params({**self.params, "verbose": self.verbose})

    def on_train_begin(self, logs=None):
        self._pass_params()
        self.logger.on_train_begin(logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._batch_hook = self.logger.on_train_batch_end
        self.logger.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self.logger.on_epoch_end(epoch, logs)

    def on_test_begin(self, logs=None):
        # Within fit the logger itself keeps validation silent.
        self._pass_params()
        self._batch_hook = self.logger.on_test_batch_end
        self.logger.on_test_begin(logs)

    def on_test_end(self, logs=None):
        self.logger.on_test_end(keras_order(logs))

    def on_predict_begin(self, logs=None):
        self._pass_params()
        self._batch_hook = self.logger.on_predict_batch_end  # which shows no logs
        self.logger.on_predict_begin(logs)

    def on_predict_end(self, logs=None):
        self.logger.on_predict_end(logs)


class ProgressBars:
    """The bar of one ``fit``/``evaluate``/``predict``: its callbacks (none where nothing shows)
    and the context in which the engine feeds it."""

    def __init__(self, callbacks, verbose, *, rank: int = 0):
        if verbose not in _VERBOSE_VALUES:
            raise ConfigError(f"verbose must be 'auto', 0, 1 or 2; got {verbose!r}.")
        given = [c for c in callbacks or [] if isinstance(c, keras.callbacks.ProgbarLogger)]
        verbose = verbose if rank == 0 else 0  # one voice: rank 0 prints
        # As Keras: a ProgbarLogger among the callbacks is the bar; otherwise one is added unless verbose=0.
        logger = given[0] if given else (keras.callbacks.ProgbarLogger() if verbose != 0 else None)
        self.bar = KerasProgressBar(logger, verbose) if logger is not None else None
        self.callbacks = [self.bar] if self.bar is not None else []

    def feeding(self):
        return self.bar.feeding() if self.bar is not None else progress.shown_by(None)
