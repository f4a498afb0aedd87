"""The callback machinery: the ``Callback`` base class, the list that fans hooks out (and knows
which per-batch hooks anyone listens to), and helpers the callbacks share.

Callbacks see ``self.model``: the Keras model for the Keras front end, the ``Trainer`` for the
native API. Both offer ``stop_training``, ``get_weights`` and ``set_weights``.
"""

from __future__ import annotations

from hpctrain.errors import ConfigError

_HOOKS = (
    "on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
    "on_train_batch_begin", "on_train_batch_end", "on_test_begin", "on_test_end",
    "on_test_batch_begin", "on_test_batch_end", "on_predict_begin", "on_predict_end",
    "on_predict_batch_begin", "on_predict_batch_end",
)


class Callback:
    """Base class: override the hooks you need. ``logs`` is a dict of metric name -> float."""

    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model) -> None:
        self.model = model

    def set_params(self, params: dict) -> None:
        self.params = params

    def on_train_begin(self, logs=None): ...
    def on_train_end(self, logs=None): ...
    def on_epoch_begin(self, epoch, logs=None): ...
    def on_epoch_end(self, epoch, logs=None): ...
    def on_train_batch_begin(self, batch, logs=None): ...
    def on_train_batch_end(self, batch, logs=None): ...
    def on_test_begin(self, logs=None): ...
    def on_test_end(self, logs=None): ...
    def on_test_batch_begin(self, batch, logs=None): ...
    def on_test_batch_end(self, batch, logs=None): ...
    def on_predict_begin(self, logs=None): ...
    def on_predict_end(self, logs=None): ...
    def on_predict_batch_begin(self, batch, logs=None): ...
    def on_predict_batch_end(self, batch, logs=None): ...

    # Keras 2 names for the train-batch hooks.
    def on_batch_begin(self, batch, logs=None): ...
    def on_batch_end(self, batch, logs=None): ...


# Classes whose hooks do nothing: this module's ``Callback``, and a front end's own base class
# (Keras's ``keras.callbacks.Callback``), registered by that front end.
_NO_OP_BASES: list[type] = [Callback]


def register_callback_base(base: type) -> None:
    """Accept callbacks derived from ``base``, whose own hooks are taken to do nothing."""
    if base not in _NO_OP_BASES:
        _NO_OP_BASES.append(base)


def _overrides(callback, hook: str) -> bool:
    """Whether the callback does something in ``hook`` (a method of its class, or a function set on it)."""
    method = getattr(callback, hook, None)
    if method is None:
        return False
    function = getattr(method, "__func__", method)
    return all(function is not getattr(base, hook, None) for base in _NO_OP_BASES)


def is_chief(callback: Callback) -> bool:
    """Rank 0, the replica that writes files; any process that is not a replica."""
    plan = getattr(callback.model, "plan", None)
    return getattr(plan, "rank", 0) == 0


class CallbackList:
    """Fans each hook out to the callbacks; knows which per-batch hooks anyone listens to.

    Per-batch logs cost a host sync each, so they are computed only when some callback
    overrides a batch hook.
    """

    def __init__(self, callbacks, *, model, params: dict):
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            if not isinstance(callback, tuple(_NO_OP_BASES)):
                raise ConfigError(
                    f"callbacks must be Callback instances; got {type(callback).__name__}. "
                    "Subclass keras.callbacks.Callback (or hpctrain.engine.callbacks.Callback)."
                )
            callback.set_model(model)
            callback.set_params(params)
        self.wants_train_batch_logs = self.wants("on_train_batch_end", "on_batch_end")
        self.wants_train_batch_begin = self.wants("on_train_batch_begin", "on_batch_begin")

    def wants(self, *hooks: str) -> bool:
        """Whether some callback does something in one of ``hooks`` (per-batch logs cost a sync)."""
        return any(_overrides(cb, hook) for cb in self.callbacks for hook in hooks)

    def call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(*args)

    def train_batch_begin(self, batch: int) -> None:
        for callback in self.callbacks:
            callback.on_train_batch_begin(batch, {})
            if isinstance(callback, Callback):  # Keras's own base class calls on_batch_begin itself
                callback.on_batch_begin(batch, {})

    def train_batch_end(self, batch: int, logs: dict) -> None:
        for callback in self.callbacks:
            callback.on_train_batch_end(batch, logs)
            if isinstance(callback, Callback):
                callback.on_batch_end(batch, logs)


_LOWER_IS_BETTER = ("loss", "error", "mse", "mae", "crossentropy", "hinge", "divergence", "deviance")
_HIGHER_IS_BETTER = ("acc", "auc", "precision", "recall", "f1", "fmeasure", "r2", "correct", "iou", "score")


def sounds_like_a_score(monitor: str) -> bool:
    """``mode="auto"``: whether ``monitor`` improves upwards, from its name; a name that says
    neither is refused, as Keras refuses a metric whose direction it cannot tell."""
    name = monitor.removeprefix("val_").lower()
    if any(word in name for word in _LOWER_IS_BETTER):
        return False
    if any(word in name for word in _HIGHER_IS_BETTER):
        return True
    raise ConfigError(f"mode='auto' cannot tell whether {monitor!r} improves upwards or downwards; pass "
                      "mode='max' or mode='min'.")


def learning_rate_of(model) -> float:
    optimizer = model.optimizer  # a Keras optimizer, or the native API's torch/lazy optimizer
    return float(optimizer.learning_rate if hasattr(optimizer, "learning_rate") else optimizer.param_groups[0]["lr"])


def set_learning_rate(model, rate: float) -> None:
    optimizer = model.optimizer
    if hasattr(optimizer, "learning_rate"):
        optimizer.learning_rate = rate
    else:
        for group in optimizer.param_groups:
            group["lr"] = rate
