"""Callbacks with Keras's hooks: ``History``, ``EarlyStopping``, ``LambdaCallback``,
``LearningRateScheduler``, ``ReduceLROnPlateau``, ``CSVLogger``, ``ModelCheckpoint``,
``TensorBoard``. Only rank 0 prints or writes files.

Callbacks see ``self.model``: the Keras model for the Keras front end, the ``Trainer`` for the
native API. Both offer ``stop_training``, ``get_weights`` and ``set_weights``.
"""

from __future__ import annotations

import csv
import os
import time

import numpy as np

from hpctrain.arguments import is_number, is_whole_number
from hpctrain.engine.checkpoint import CheckpointConfig
from hpctrain.errors import ConfigError, MissingDependencyError, warn

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
        self.higher_is_better = mode == "max" or (mode == "auto" and _sounds_like_a_score(monitor))
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


_LOWER_IS_BETTER = ("loss", "error", "mse", "mae", "crossentropy", "hinge", "divergence", "deviance")
_HIGHER_IS_BETTER = ("acc", "auc", "precision", "recall", "f1", "fmeasure", "r2", "correct", "iou", "score")


def _sounds_like_a_score(monitor: str) -> bool:
    """``mode="auto"``: whether ``monitor`` improves upwards, from its name; a name that says
    neither is refused, as Keras refuses a metric whose direction it cannot tell."""
    name = monitor.removeprefix("val_").lower()
    if any(word in name for word in _LOWER_IS_BETTER):
        return False
    if any(word in name for word in _HIGHER_IS_BETTER):
        return True
    raise ConfigError(f"mode='auto' cannot tell whether {monitor!r} improves upwards or downwards; pass "
                      "mode='max' or mode='min'.")


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


def _learning_rate_of(model) -> float:
    optimizer = model.optimizer  # a Keras optimizer, or the native API's torch/lazy optimizer
    return float(optimizer.learning_rate if hasattr(optimizer, "learning_rate") else optimizer.param_groups[0]["lr"])


def _set_learning_rate(model, rate: float) -> None:
    optimizer = model.optimizer
    if hasattr(optimizer, "learning_rate"):
        optimizer.learning_rate = rate
    else:
        for group in optimizer.param_groups:
            group["lr"] = rate


class LearningRateScheduler(Callback):
    """Sets the learning rate at each epoch's start to ``schedule(epoch, lr)`` (or ``schedule(epoch)``)."""

    def __init__(self, schedule, verbose=0):
        super().__init__()
        self.schedule = schedule
        self.verbose = verbose

    def on_epoch_begin(self, epoch, logs=None):
        current = _learning_rate_of(self.model)
        try:
            rate = self.schedule(epoch, current)
        except TypeError:  # the one-argument form
            rate = self.schedule(epoch)
        if not is_number(rate) or rate != rate:
            raise ConfigError(f"the learning-rate schedule returned {rate!r} for epoch {epoch}; it must return a "
                              "number.")
        _set_learning_rate(self.model, float(rate))
        if self.verbose and is_chief(self):
            print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {float(rate)}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = _learning_rate_of(self.model)


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
        self.higher_is_better = mode == "max" or (mode == "auto" and _sounds_like_a_score(monitor))

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
        logs["learning_rate"] = _learning_rate_of(self.model)
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
            old = _learning_rate_of(self.model)
            if old > self.min_lr:
                new = max(old * self.factor, self.min_lr)
                _set_learning_rate(self.model, new)
                if self.verbose and is_chief(self):
                    print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new}.")
                self.cooldown_counter = self.cooldown
                self.wait = 0


class CSVLogger(Callback):
    """Writes each epoch's logs as a CSV row (``epoch`` first, then the metrics by name); rank 0 only."""

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.filename, self.separator, self.append = str(filename), separator, append
        self.keys = None
        self.file = None

    def on_train_begin(self, logs=None):
        if not is_chief(self):
            return
        has_rows = self.append and os.path.exists(self.filename) and os.path.getsize(self.filename) > 0
        self.file = open(self.filename, "a" if self.append else "w", newline="")
        self.keys = None if not has_rows else self._existing_keys()

    def _existing_keys(self):
        with open(self.filename, newline="") as f:
            header = next(csv.reader(f, delimiter=self.separator), [])
        return header[1:] or None

    def on_epoch_end(self, epoch, logs=None):
        if self.file is None:
            return
        logs = logs or {}
        writer = csv.writer(self.file, delimiter=self.separator)
        if self.keys is None:
            self.keys = sorted(logs)
            writer.writerow(["epoch", *self.keys])
        writer.writerow([epoch, *(logs.get(key, "NA") for key in self.keys)])
        self.file.flush()  # a crash later loses no finished epoch

    def on_train_end(self, logs=None):
        if self.file is not None:
            self.file.close()
            self.file = None


class ModelCheckpoint(Callback):
    """Saves the model (or only its weights) at the end of each epoch, or every ``save_freq`` batches.

    ``filepath`` may hold Keras's fields, e.g. ``"ckpt-{epoch:02d}-{val_loss:.3f}.keras"`` (epoch
    counted from 1). With ``save_best_only`` a file is written only when ``monitor`` improves.
    Rank 0 writes; every file is written to a temporary name and renamed, so a crash mid-write
    never leaves a truncated checkpoint under the final name.
    """

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False, save_weights_only=False,
                 mode="auto", save_freq="epoch", initial_value_threshold=None):
        super().__init__()
        if save_freq != "epoch" and (not is_whole_number(save_freq) or save_freq < 1):
            raise ConfigError(f"save_freq must be 'epoch' or a whole number of batches >= 1; got {save_freq!r}.")
        if mode not in ("auto", "min", "max"):
            raise ConfigError(f"ModelCheckpoint mode must be 'auto', 'min' or 'max'; got {mode!r}.")
        self.filepath, self.monitor, self.verbose = os.fspath(filepath), monitor, verbose
        _check_not_a_folder(self.filepath)
        self.save_best_only, self.save_weights_only, self.save_freq = save_best_only, save_weights_only, save_freq
        self.higher_is_better = mode == "max" or (mode == "auto" and _sounds_like_a_score(monitor))
        self.best = initial_value_threshold if initial_value_threshold is not None else (
            -np.inf if self.higher_is_better else np.inf)
        self.epoch = 0
        self.batches_seen = 0
        if save_freq != "epoch":
            self.on_train_batch_end = self._every_n_batches  # only then: per-batch logs cost a sync each

    def on_train_begin(self, logs=None):
        if not self.save_weights_only and not hasattr(self.model, "save"):
            raise ConfigError("ModelCheckpoint saves a whole model only for Keras models; for a torch module give "
                              "save_weights_only=True (its state_dict, read back with trainer.load_weights or "
                              "module.load_state_dict(torch.load(path))).")

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def checkpoint_state(self) -> dict:
        return {"best": self.best, "batches_seen": self.batches_seen}

    def load_checkpoint_state(self, state: dict) -> None:
        self.best, self.batches_seen = state["best"], state["batches_seen"]

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, logs or {})

    def _every_n_batches(self, batch, logs=None):
        self.batches_seen += 1
        if self.batches_seen % self.save_freq == 0:
            self._save(self.epoch, logs or {}, batch=batch)

    def _save(self, epoch: int, logs: dict, batch: int | None = None) -> None:
        if self.save_best_only:
            value = logs.get(self.monitor)
            if value is None:
                warn(f"ModelCheckpoint monitors {self.monitor!r}, which is not in the logs "
                     f"(available: {', '.join(sorted(logs))}); nothing was saved.")
                return
            improved = value > self.best if self.higher_is_better else value < self.best
            if not improved:
                return
            self.best = value
        if not is_chief(self):
            return
        path = self._path(epoch, logs, batch)
        _check_not_a_folder(path)
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: saved the {'weights' if self.save_weights_only else 'model'} to {path}")

    def _path(self, epoch: int, logs: dict, batch: int | None) -> str:
        try:
            # Keras counts both from 1 in file names.
            return self.filepath.format(epoch=epoch + 1, batch=None if batch is None else batch + 1, **logs)
        except KeyError as exc:
            raise ConfigError(f"ModelCheckpoint filepath {self.filepath!r} names {exc}, which is not in the logs "
                              f"(available: epoch, batch, {', '.join(sorted(logs))}).") from exc


def _check_not_a_folder(path: str) -> None:
    """Refused when made (or when a formatted name meets a folder), not by the save after an epoch."""
    if os.path.isdir(path):
        example = os.path.join(path, "weights-{epoch:02d}.pt")
        raise ConfigError(f"ModelCheckpoint filepath {path!r} is an existing folder; give a file path, e.g. "
                          f"{example!r} (fields such as {{epoch}} make one file per epoch).")


class TensorBoard(Callback):
    """Writes TensorBoard event files as Keras does: ``log_dir/train`` and ``log_dir/validation``.

    Each epoch: ``epoch_<metric>`` scalars (the validation ones, without ``val_``, under
    ``validation``) and ``epoch_learning_rate``; with ``update_freq="batch"`` or ``N``, also
    ``batch_<metric>`` every N training batches (each read is a host sync, so it costs speed);
    with ``histogram_freq=N``, a histogram of every weight every N epochs. Written with
    ``torch.utils.tensorboard.SummaryWriter``; needs ``pip install tensorboard``.
    """

    def __init__(self, log_dir="logs", histogram_freq=0, write_graph=True, write_images=False,
                 write_steps_per_second=False, update_freq="epoch", profile_batch=0, embeddings_freq=0,
                 embeddings_metadata=None):
        super().__init__()
        if write_images or profile_batch or embeddings_freq or embeddings_metadata is not None:
            raise ConfigError("TensorBoard: write_images, profile_batch and embeddings are not supported yet; "
                              "remove them (scalars, histograms and steps per second are written).")
        if not is_whole_number(histogram_freq) or histogram_freq < 0:
            raise ConfigError(f"TensorBoard histogram_freq must be a whole number >= 0; got {histogram_freq!r}.")
        self.log_dir = str(log_dir)
        self.histogram_freq = histogram_freq
        self.write_steps_per_second = write_steps_per_second
        self.update_freq = _batch_frequency(update_freq)
        self.writers = {}
        self.global_batch = 0
        if self.update_freq:
            self.on_train_batch_end = self._log_batch  # only then: per-batch logs cost a sync each

    def _writer(self, name: str):
        if name not in self.writers:
            self.writers[name] = _summary_writer(os.path.join(self.log_dir, name))
        return self.writers[name]

    def on_train_begin(self, logs=None):
        self.global_batch = 0
        if is_chief(self):
            self._writer("train")  # fails here, before any step, when tensorboard is missing

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started, self.epoch_batches = time.perf_counter(), 0

    def _log_batch(self, batch, logs=None):
        self.global_batch += 1
        if self.global_batch % self.update_freq or not is_chief(self):
            return
        writer = self._writer("train")
        for name, value in (logs or {}).items():
            writer.add_scalar("batch_" + name, value, self.global_batch)

    def on_epoch_end(self, epoch, logs=None):
        if not is_chief(self):
            return
        logs = dict(logs or {})
        train = {name: value for name, value in logs.items() if not name.startswith("val_")}
        train["learning_rate"] = _learning_rate_of(self.model)
        if self.write_steps_per_second:
            steps = self.params.get("steps") or 0
            train["steps_per_second"] = steps / max(time.perf_counter() - self.epoch_started, 1e-9)
        for writer_name, values in (("train", train),
                                    ("validation", {n[4:]: v for n, v in logs.items() if n.startswith("val_")})):
            for name, value in values.items():
                self._writer(writer_name).add_scalar("epoch_" + name, value, epoch)
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            for tag, weight in _named_weights(self.model):
                self._writer("train").add_histogram(tag + "/histogram", weight.detach().cpu(), epoch)
        for writer in self.writers.values():
            writer.flush()  # an epoch's numbers are on disk while training goes on

    def on_train_end(self, logs=None):
        for writer in self.writers.values():
            writer.close()
        self.writers = {}


def _batch_frequency(update_freq) -> int:
    if update_freq == "epoch":
        return 0
    if update_freq == "batch":
        return 1
    if not is_whole_number(update_freq) or update_freq < 1:
        raise ConfigError(f"TensorBoard update_freq must be 'epoch', 'batch' or a whole number of batches >= 1; "
                          f"got {update_freq!r}.")
    return update_freq


def _summary_writer(path: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise MissingDependencyError(
            "the TensorBoard callback writes event files with tensorboard's writer, which is not installed. "
            "Install it with: pip install tensorboard (or pip install 'hpctrain[tensorboard]')."
        ) from exc
    return SummaryWriter(log_dir=path)


def _named_weights(model):
    """``(layer/weight, tensor)`` pairs: by Keras layer where the model has layers, else by parameter name."""
    layers = getattr(model, "layers", None)
    if layers is not None:
        return [(f"{layer.name}/{name}", weight) for layer in layers for name, weight in layer.named_parameters()]
    module = getattr(model, "module", model)
    return [(name.replace(".", "/"), weight) for name, weight in module.named_parameters()]


class BackupAndRestore(Callback):
    """Keras's ``BackupAndRestore``: back up the whole training state to ``backup_dir`` and, when
    ``fit`` starts and a backup exists, continue from it exactly, mid-epoch included.

    ``save_freq``: ``"epoch"`` or a number of steps. ``delete_checkpoint``: remove the backups
    once ``fit`` ends without an error. The engine does the work (see
    :class:`~hpctrain.engine.checkpoint.CheckpointConfig`); this callback only carries the settings,
    so it adds no per-batch hook and no host sync between saves.
    """

    def __init__(self, backup_dir, save_freq="epoch", double_checkpoint=True, delete_checkpoint=True):
        super().__init__()
        # The two newest checkpoints are always kept, so a damaged newest one has a fallback.
        self.checkpoint_config = CheckpointConfig(directory=backup_dir, save_freq=save_freq,
                                                  keep=2 if double_checkpoint else 1,
                                                  delete_at_end=bool(delete_checkpoint))
