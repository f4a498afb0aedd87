"""Callbacks that write files, as Keras's do: ``CSVLogger``, ``ModelCheckpoint``, ``TensorBoard``,
``BackupAndRestore``. Only rank 0 writes.
"""

from __future__ import annotations

import csv
import os
import time

import numpy as np

from hpctrain.arguments import is_whole_number
from hpctrain.engine.callback_base import (
    Callback,
    is_chief,
    learning_rate_of,
    sounds_like_a_score,
)
from hpctrain.engine.checkpoint import CheckpointConfig
from hpctrain.errors import ConfigError, MissingDependencyError, warn


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
        self.higher_is_better = mode == "max" or (mode == "auto" and sounds_like_a_score(monitor))
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
        train["learning_rate"] = learning_rate_of(self.model)
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
