"""Training checkpoints: exact in-process resume, damaged files, pickles refused, a full disk.

Keras models resume exactly with the engine's ``BackupAndRestore`` (or ``fit(checkpoint=...)``);
the engine's ``EarlyStopping``/``ReduceLROnPlateau`` carry their state in the checkpoint, so
they are the ones used where a resumed run must equal the uninterrupted one bit for bit."""

import errno
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

import hpctrain as tf
from hpctrain.engine import Trainer
from hpctrain.engine import checkpoint as ckpt
from hpctrain.engine.checkpoint import CheckpointConfig
from hpctrain.errors import CheckpointError, ConfigError, HpctrainWarning
from hpctrain.engine.callbacks import BackupAndRestore, EarlyStopping, ReduceLROnPlateau
from hpctrain.keras import Input
from hpctrain.keras.callbacks import Callback
from hpctrain.keras.layers import Dense
from hpctrain.keras.models import Sequential, load_model
from hpctrain.keras.optimizers.schedules import ExponentialDecay


class Interrupt(Exception):
    pass


class StopAtBatch(Callback):
    """Raises at the ``at``-th batch of this fit (counted from 1), as a crash would stop the run."""

    def __init__(self, at):
        super().__init__()
        self.at, self.seen = at, 0

    def on_train_batch_begin(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            raise Interrupt


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 20)).astype("float32")
    return x, rng.integers(0, 4, size=200)


def _fit(directory, *, eager=False, stop_at=None, epochs=3, save_freq=4, schedule=False):
    """A fresh model from the same seed, trained with backups in ``directory``; ``None`` if stopped."""
    tf.keras.utils.set_random_seed(0)
    model = Sequential([Input((20,)), Dense(16, activation="relu"), Dense(4, activation="softmax")])
    rate = ExponentialDecay(0.01, decay_steps=3, decay_rate=0.8) if schedule else 0.01
    optimizer = tf.keras.optimizers.SGD(0.1, momentum=0.9) if eager else tf.keras.optimizers.Adam(rate)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  plan=tf.make_plan(threads=1), run_eagerly=eager)
    callbacks = [BackupAndRestore(str(directory), save_freq=save_freq), EarlyStopping(monitor="val_loss", patience=5)]
    if not schedule:  # a scheduled rate cannot also be set by hand
        callbacks.append(ReduceLROnPlateau(monitor="loss", patience=0, factor=0.5, min_delta=1.0))
    x, y = _data()
    try:
        history = model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, validation_split=0.1,
                            callbacks=callbacks + ([StopAtBatch(stop_at)] if stop_at else []))
    except Interrupt:
        return None
    return model.get_weights(), history.history


def _assert_same_run(got, reference):
    assert len(got[0]) == len(reference[0])
    for ours, theirs in zip(got[0], reference[0]):
        assert np.array_equal(ours, theirs)
    assert got[1] == reference[1]  # every epoch's logs, as floats, bit for bit


@pytest.mark.parametrize("eager", [False, True], ids=["static-adam", "autograd-sgd"])
def test_interrupted_twice_then_resumed_equals_the_uninterrupted_run(tmp_path, eager):
    reference = _fit(tmp_path / "reference", eager=eager)
    assert not os.path.exists(tmp_path / "reference")  # delete_checkpoint=True: removed at a successful end, as in Keras
    assert _fit(tmp_path / "run", eager=eager, stop_at=7) is None  # mid-epoch 2 of 7 steps
    assert _fit(tmp_path / "run", eager=eager, stop_at=9) is None  # resumed at step 4, stopped in epoch 3
    _assert_same_run(_fit(tmp_path / "run", eager=eager), reference)
    assert reference[1]["learning_rate"][-1] < reference[1]["learning_rate"][0]  # the LR state mattered


def test_a_learning_rate_schedule_continues_from_the_restored_update_count(tmp_path):
    reference = _fit(tmp_path / "reference", schedule=True)
    assert _fit(tmp_path / "run", stop_at=11, schedule=True) is None  # resumes at step 8 of 21
    _assert_same_run(_fit(tmp_path / "run", schedule=True), reference)


def test_checkpoint_holds_position_permutation_and_sums(tmp_path):
    _fit(tmp_path, stop_at=7)  # stopped before step 7: one save, after global step 4
    path, payload = ckpt.load_latest(str(tmp_path))
    assert os.path.basename(path) == "ckpt-00000001.safetensors"
    assert payload["position"] == {"epoch": 0, "step": 4, "global_step": 4, "finished": False, "world_size": 1}
    order = payload["order"]
    assert sorted(order.tolist()) == list(range(180))  # one permutation of the 180 training rows
    sums = payload["replicas"][0]["metrics"]
    assert sums[1].item() == 4 * 32 and sums[3].item() == 4 * 32  # loss and accuracy counted 128 rows each
    assert set(payload["rng"]) >= {"python", "numpy", "shuffle"}


def test_native_api_resumes_with_a_checkpoint_config(tmp_path):
    x, y = _data()

    def fit(stop_at=None):
        torch.manual_seed(0)
        module = torch.nn.Sequential(torch.nn.Linear(20, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
        trainer = Trainer(module, loss=torch.nn.CrossEntropyLoss(), optimizer="adam",
                          plan=tf.make_plan(threads=1))
        config = CheckpointConfig(directory=str(tmp_path / "native"), save_freq=3, keep=3)
        try:
            history = trainer.fit(x, y, epochs=2, batch_size=50, verbose=0, checkpoint=config,
                                  callbacks=[StopAtBatch(stop_at)] if stop_at else None)
        except Interrupt:
            return None
        return trainer.get_weights(), history.history

    shutil.rmtree(tmp_path / "native", ignore_errors=True)
    reference = fit()
    shutil.rmtree(tmp_path / "native")
    assert fit(stop_at=6) is None
    assert len(ckpt.checkpoint_files(str(tmp_path / "native"))) == 1  # after step 3 only
    _assert_same_run(fit(), reference)
    assert len(ckpt.checkpoint_files(str(tmp_path / "native"))) == 2  # steps 3 and 6; delete_at_end=False


def test_a_shuffling_dataloader_resumes_mid_epoch_in_the_same_order(tmp_path):
    """The loader draws its shuffle order from torch's RNG as its pass begins; the resumed epoch
    begins its pass from that same state, so it skips exactly the batches already trained on."""
    x, y = _data()
    dataset = torch.utils.data.TensorDataset(torch.tensor(x), torch.tensor(y))

    def fit(stop_at=None):
        torch.manual_seed(0)
        module = torch.nn.Sequential(torch.nn.Linear(20, 8), torch.nn.Tanh(), torch.nn.Dropout(0.2),
                                     torch.nn.Linear(8, 4))
        trainer = Trainer(module, loss=torch.nn.CrossEntropyLoss(), optimizer="adam", plan=tf.make_plan(threads=1))
        loader = torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=True)
        config = CheckpointConfig(directory=str(tmp_path / "loader"), save_freq=5)
        try:
            history = trainer.fit(loader, epochs=2, verbose=0, checkpoint=config,
                                  callbacks=[StopAtBatch(stop_at)] if stop_at else None)
        except Interrupt:
            return None
        return trainer.get_weights(), history.history

    reference = fit()
    shutil.rmtree(tmp_path / "loader")
    assert fit(stop_at=20) is None  # in the second epoch (13 batches each), after the save at step 15
    _assert_same_run(fit(), reference)


def test_payload_round_trip_is_exact(tmp_path):
    payload = {"t": torch.randn(3, 2), "i": torch.arange(5), "a": np.arange(4, dtype=np.int64),
               "nested": [1, 2.5, None, "s", (3, (4, 5.0))], "f": float("inf"), "n": {"x": True}}
    back = ckpt.decode(ckpt.encode(payload), name="memory")
    assert torch.equal(back["t"], payload["t"]) and torch.equal(back["i"], payload["i"])
    assert np.array_equal(back["a"], payload["a"])
    assert back["nested"] == [1, 2.5, None, "s", (3, (4, 5.0))] and back["f"] == float("inf")


def _two_checkpoints(directory):
    older = ckpt.save_checkpoint(str(directory), {"w": torch.ones(4), "epoch": 1})
    newer = ckpt.save_checkpoint(str(directory), {"w": torch.full((4,), 2.0), "epoch": 2})
    return older, newer


@pytest.mark.parametrize("damage", ["truncated", "flipped data byte", "flipped metadata byte"])
def test_damaged_newest_checkpoint_is_reported_and_the_previous_used(tmp_path, damage):
    older, newer = _two_checkpoints(tmp_path)
    blob = bytearray(open(newer, "rb").read())
    if damage == "truncated":
        blob = blob[:len(blob) // 2]
    elif damage == "flipped data byte":
        blob[-3] ^= 0x01
    else:
        blob[blob.find(b'"epoch\\": 2') + 10] ^= 0x01  # the 2 becomes a 3: still valid JSON
    with open(newer, "wb") as f:
        f.write(bytes(blob))
    with pytest.raises(CheckpointError, match="truncated|SHA-256") as error:
        ckpt.load_checkpoint(newer)
    assert newer in str(error.value)
    with pytest.warns(HpctrainWarning, match=f"skipping the damaged checkpoint {newer}"):
        path, payload = ckpt.load_latest(str(tmp_path))
    assert path == older and payload["epoch"] == 1 and torch.equal(payload["w"], torch.ones(4))


def test_damaged_newest_checkpoint_falls_back_in_fit_and_still_equals_reference(tmp_path):
    reference = _fit(tmp_path / "reference")
    assert _fit(tmp_path / "run", stop_at=10) is None  # saved after steps 4 and 8
    newest = ckpt.checkpoint_files(str(tmp_path / "run"))[0]
    with open(newest, "r+b") as f:
        f.truncate(100)
    with pytest.warns(HpctrainWarning, match="ckpt-00000002.safetensors"):
        _assert_same_run(_fit(tmp_path / "run"), reference)


class _WritesMarker:
    """Unpickling this runs ``open(marker, "w")``: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_in_a_checkpoint_or_weights_file_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"model": _WritesMarker(str(marker))})
    torch_file = tmp_path / "torch-save.pt"
    torch.save({"x": _WritesMarker(str(marker))}, torch_file)  # torch's zip-of-pickle format
    assert not marker.exists()
    backup = tmp_path / "backup"
    backup.mkdir()
    for name, blob in [("ckpt-00000009.safetensors", evil), ("ckpt-00000008.safetensors", torch_file.read_bytes())]:
        (backup / name).write_bytes(blob)
        with pytest.raises(CheckpointError, match="not a safetensors|not an hpctrain checkpoint|truncated"):
            ckpt.load_checkpoint(str(backup / name))
    with pytest.warns(HpctrainWarning, match="skipping the damaged checkpoint"):
        assert ckpt.load_latest(str(backup)) is None
    # Keras's own loaders never unpickle: an .h5 name is opened by h5py, a .keras name as a zip,
    # any other name is refused by its extension.
    model = Sequential([Input((3,)), Dense(2)])
    (tmp_path / "evil.weights.h5").write_bytes(evil)
    (tmp_path / "evil.keras").write_bytes(evil)
    for load in (model.load_weights, load_model):
        with pytest.raises(OSError, match="file signature not found"):
            load(str(tmp_path / "evil.weights.h5"))
        with pytest.raises(ValueError, match="File format not supported"):
            load(str(torch_file))
    with pytest.raises(ValueError, match=r"is an accessible `\.keras` zip file"):
        load_model(str(tmp_path / "evil.keras"))
    assert not marker.exists()


def test_full_disk_keeps_the_previous_checkpoint_and_raises_a_clear_error(tmp_path, monkeypatch):
    older = ckpt.save_checkpoint(str(tmp_path), {"w": torch.ones(2)})
    before = open(older, "rb").read()

    def full_disk(f, blob):
        f.write(blob[:len(blob) // 3])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt, "_write_all", full_disk)
    with pytest.raises(CheckpointError, match=r"the disk is full .*previous checkpoint .*ckpt-00000001.* is intact"):
        ckpt.save_checkpoint(str(tmp_path), {"w": torch.zeros(2)})
    assert os.listdir(tmp_path) == ["ckpt-00000001.safetensors"]  # no temporary file left behind
    assert open(older, "rb").read() == before


def test_full_disk_during_fit_stops_it_and_a_rerun_resumes_exactly(tmp_path, monkeypatch):
    reference = _fit(tmp_path / "reference")
    writes = []
    real_write = ckpt._write_all

    def second_write_fails(f, blob):
        writes.append(1)
        if len(writes) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(f, blob)

    monkeypatch.setattr(ckpt, "_write_all", second_write_fails)
    with pytest.raises(CheckpointError, match="the disk is full"):
        _fit(tmp_path / "run")
    assert [os.path.basename(p) for p in ckpt.checkpoint_files(str(tmp_path / "run"))] == ["ckpt-00000001.safetensors"]
    monkeypatch.setattr(ckpt, "_write_all", real_write)
    _assert_same_run(_fit(tmp_path / "run"), reference)


def test_keeps_only_the_newest_files(tmp_path):
    for value in range(4):
        ckpt.save_checkpoint(str(tmp_path), {"v": value}, keep=2)
    assert [os.path.basename(p) for p in ckpt.checkpoint_files(str(tmp_path))] == [
        "ckpt-00000004.safetensors", "ckpt-00000003.safetensors"]


@pytest.mark.parametrize("arguments, message", [
    ({"directory": "d", "save_freq": 0}, "save_freq must be 'epoch' or a whole number of steps >= 1; got 0"),
    ({"directory": "d", "save_freq": "batch"}, "got 'batch'"),
    ({"directory": "d", "keep": 0}, "keep must be a whole number >= 1; got 0"),
    ({"directory": ""}, "the checkpoint directory must be a path"),
])
def test_bad_checkpoint_settings_are_rejected(arguments, message):
    with pytest.raises(ConfigError, match=message):
        CheckpointConfig(**arguments)


def test_two_checkpoint_settings_at_once_are_rejected(tmp_path):
    x, y = _data()
    trainer = Trainer(torch.nn.Sequential(torch.nn.Linear(20, 4)), loss=torch.nn.CrossEntropyLoss(), optimizer="sgd",
                      plan=tf.make_plan(threads=1))
    with pytest.raises(ConfigError, match="fit got 2 checkpoint settings"):
        trainer.fit(x, y, verbose=0, checkpoint=CheckpointConfig(directory=str(tmp_path)),
                    callbacks=[BackupAndRestore(str(tmp_path))])
