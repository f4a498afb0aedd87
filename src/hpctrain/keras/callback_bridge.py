"""Keras callbacks in the engine's loop, and the two hooks that keep Keras's state exact."""

from __future__ import annotations

import keras

from hpctrain.keras import optimizer_map
from hpctrain.keras.progress_bridge import keras_order


class EpochHooksOnly(keras.callbacks.Callback):
    """A Keras callback that overrides batch hooks but, with its settings, acts once per epoch
    (``ModelCheckpoint``/``BackupAndRestore`` with ``save_freq="epoch"``, ``TensorBoard`` with
    ``update_freq="epoch"``): its epoch hooks alone, so the engine pays no per-batch Python."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def set_model(self, model):
        super().set_model(model)
        self.inner.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        self.inner.set_params(params)

    def on_train_begin(self, logs=None):
        self.inner.on_train_begin(logs)

    def on_train_end(self, logs=None):
        self.inner.on_train_end(logs)

    def on_epoch_begin(self, epoch, logs=None):
        self.inner.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self.inner.on_epoch_end(epoch, logs)

    def on_test_begin(self, logs=None):
        self.inner.on_test_begin(logs)

    def on_test_end(self, logs=None):
        self.inner.on_test_end(logs)


def _acts_per_epoch(callback) -> bool:
    if isinstance(callback, (keras.callbacks.ModelCheckpoint, keras.callbacks.BackupAndRestore)):
        return getattr(callback, "save_freq", "epoch") == "epoch"
    if isinstance(callback, keras.callbacks.TensorBoard):
        return getattr(callback, "update_freq", "epoch") == "epoch"
    return False


def watches(callbacks, *hooks: str) -> bool:
    """Whether some callback does something in one of ``hooks`` (its class's method, or a function
    set on it, as ``LambdaCallback`` does). A ``ProgbarLogger`` is not asked: the engine feeds it
    at its bar's refresh interval (:mod:`hpctrain.keras.progress_bridge`), not each batch."""
    base = keras.callbacks.Callback
    return any(hook in vars(c) or getattr(type(c), hook, None) is not getattr(base, hook)
               for c in callbacks or [] if not isinstance(c, keras.callbacks.ProgbarLogger) for hook in hooks)


class UserVerbose(keras.callbacks.Callback):
    """First in the list: every callback is told, in ``params["verbose"]``, the verbose of the
    user's call, as Keras's loops tell them. The engine itself runs with verbose=0 while Keras's
    own bar prints, and the callbacks of one call share one params dict."""

    def __init__(self, verbose):
        super().__init__()
        self.verbose = verbose

    def set_params(self, params):
        params["verbose"] = self.verbose
        super().set_params(params)


def adapt_callbacks(callbacks) -> list:
    """The callbacks as the engine calls them; a ``ProgbarLogger`` is left out, since
    :class:`~hpctrain.keras.progress_bridge.ProgressBars` shows it."""
    return [EpochHooksOnly(c) if _acts_per_epoch(c) else c for c in (callbacks or [])
            if not isinstance(c, keras.callbacks.ProgbarLogger)]


class StateWriter(keras.callbacks.Callback):
    """First in the list: the optimizer's state written into Keras's variables at each epoch's
    end, so user callbacks (a ``ModelCheckpoint`` saving the whole model) see Keras's state; and
    the epoch's logs put in Keras's order, so every callback (the progress bar, ``History``) sees
    them as Keras's fit gives them."""

    def __init__(self, model, engine_optimizer):
        super().__init__()
        self.keras_model, self.engine_optimizer = model, engine_optimizer

    def on_epoch_end(self, epoch, logs=None):
        if logs:  # in place: the same dict goes on to every later callback
            ordered = keras_order(logs)
            logs.clear()
            logs.update(ordered)
        if self.engine_optimizer is not None:
            optimizer_map.write_back(self.keras_model.optimizer, self.engine_optimizer)


class RateReader(keras.callbacks.Callback):
    """Last in the list: the optimizer state a callback restored as training begins
    (``BackupAndRestore``), the engine's rate (rescaled by the plan) kept in Keras's variable as
    training starts, and a learning rate set by a callback read into the engine as each epoch
    starts; says which executor runs, once, at the first fit."""

    def __init__(self, model, engine_optimizer, verbose):
        super().__init__()
        self.keras_model, self.engine_optimizer, self.verbose = model, engine_optimizer, verbose

    def on_train_begin(self, logs=None):
        if self.engine_optimizer is not None:
            optimizer_map.reload_if_changed(self.keras_model.optimizer, self.engine_optimizer)
            optimizer_map.keep_rate(self.keras_model.optimizer, self.engine_optimizer)
        said = self.keras_model.__dict__.setdefault("_hpctrain_said", set())
        plan = self.keras_model._hpctrain_session.plan
        line = f"hpctrain: fit runs on the engine: {dict(plan.reasons).get('executor', plan.executor)}"
        if self.verbose not in (0, False) and plan.rank == 0 and line not in said:  # once, not per replica
            said.add(line)
            print(line)

    def on_epoch_begin(self, epoch, logs=None):
        if self.engine_optimizer is not None:
            optimizer_map.set_rate(self.keras_model.optimizer, self.engine_optimizer)
