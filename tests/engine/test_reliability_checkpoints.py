"""Checkpoint folders: damaged or crafted files are never trusted, pruning keeps good files,
one run owns a folder at a time, and a resume says what changed since the checkpoint."""

import hashlib
import json
import os
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_tensors

import hpctrain
from hpctrain.engine import checkpoint as ckpt
from hpctrain.engine.callbacks import Callback
from hpctrain.engine.checkpoint import CheckpointConfig
from hpctrain.errors import CheckpointError, HpctrainWarning

CPU = hpctrain.make_plan(device="cpu")


def _trainer(width=8, optimizer="sgd"):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.ReLU(), torch.nn.Linear(width, 3))
    return hpctrain.Trainer(module, loss=torch.nn.CrossEntropyLoss(), optimizer=optimizer, plan=CPU)


def _data(rows=32):
    rng = np.random.default_rng(0)
    return rng.normal(size=(rows, 4)).astype("float32"), rng.integers(0, 3, size=rows)


class EpochsRun(Callback):
    def __init__(self):
        super().__init__()
        self.begun = []

    def on_epoch_begin(self, epoch, logs=None):
        self.begun.append(epoch)


def _fit(directory, epochs, *, trainer=None, data=None, **config) -> list[int]:
    """The epochs this call ran."""
    x, y = data or _data()
    config = CheckpointConfig(directory=str(directory), keep=config.pop("keep", 3), **config)
    ran = EpochsRun()
    (trainer or _trainer()).fit(x, y, epochs=epochs, batch_size=8, shuffle=False, verbose=0, checkpoint=config,
                                callbacks=[ran])
    return ran.begun


def _raw_file(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


def _signed(state: str, tensors=None) -> bytes:
    """A checkpoint whose checksum is right but whose content is whatever ``state`` says."""
    metadata = {"format": ckpt.FORMAT, "version": "1", "sha256": "0" * 64, "state": state}
    blob = bytearray(save_tensors(tensors or {"t": torch.zeros(1)}, metadata=metadata))
    start = ckpt._digest_offset(blob, "0" * 64)
    blob[start:start + 64] = hashlib.sha256(blob).hexdigest().encode()
    return bytes(blob)


def _write_newest(directory, blob: bytes) -> str:
    newest = ckpt.checkpoint_files(str(directory))
    serial = ckpt.serial_of(newest[0]) + 1 if newest else 1
    path = os.path.join(str(directory), f"{ckpt.PREFIX}{serial:08d}{ckpt.SUFFIX}")
    with open(path, "wb") as f:
        f.write(blob)
    return path


MALFORMED = {
    "metadata-not-an-object": _raw_file(b'{"__metadata__": 5}'),
    "checksum-not-a-string": _raw_file(json.dumps({"__metadata__": {"format": ckpt.FORMAT,
                                                                    "sha256": ["0"]}}).encode()),
    "missing-tensor": _signed(json.dumps({"w": {"__tensor__": "/absent"}})),
    "state-not-json": _signed("{not json"),
}


@pytest.mark.parametrize("blob", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_header_is_damage_and_the_previous_checkpoint_is_loaded(tmp_path, blob):
    good = ckpt.save_checkpoint(str(tmp_path), {"w": torch.ones(2)})
    bad = _write_newest(tmp_path, blob)
    with pytest.raises(CheckpointError):
        ckpt.load_checkpoint(bad)
    with pytest.warns(HpctrainWarning, match=f"skipping the damaged checkpoint {bad}"):
        path, payload = ckpt.load_latest(str(tmp_path))
    assert path == good and torch.equal(payload["w"], torch.ones(2))


def _crafted_from_newest(directory, change) -> str:
    path, payload = ckpt.load_latest(str(directory))
    change(payload)
    return _write_newest(directory, ckpt.encode(payload))


CRAFTED = {
    "negative-epoch": lambda payload: payload["position"].update(epoch=-5),
    "epoch-not-a-number": lambda payload: payload["position"].update(epoch="2"),
    "negative-step": lambda payload: payload["position"].update(step=-1),
    "no-position": lambda payload: payload.pop("position"),
    "model-not-tensors": lambda payload: payload.update(model={"0.weight": 1.0}),
    "no-replica-part": lambda payload: payload.update(replicas=[]),
    "made-from-not-a-record": lambda payload: payload.update(made_from=[1]),
}


@pytest.mark.parametrize("change", CRAFTED.values(), ids=CRAFTED.keys())
def test_a_checkpoint_with_invalid_fields_is_skipped_and_the_run_resumes_from_the_previous(tmp_path, change):
    _fit(tmp_path, 2)
    crafted = _crafted_from_newest(tmp_path, change)
    with pytest.warns(HpctrainWarning, match=f"skipping the damaged checkpoint {crafted}"):
        ran = _fit(tmp_path, 3)
    assert ran == [2]  # resumed after epoch 2 of 3: one epoch left


def test_pruning_counts_only_good_checkpoints_toward_keep(tmp_path):
    first = ckpt.save_checkpoint(str(tmp_path), {"w": torch.ones(2)}, keep=2)
    second = ckpt.save_checkpoint(str(tmp_path), {"w": torch.full((2,), 2.0)}, keep=2)
    damaged = _write_newest(tmp_path, b"\x00" * 16)
    newest = ckpt.save_checkpoint(str(tmp_path), {"w": torch.full((2,), 4.0)}, keep=2)
    assert ckpt.checkpoint_files(str(tmp_path)) == [newest, damaged, second]
    assert not os.path.exists(first)
    with open(newest, "r+b") as f:
        f.truncate(20)
    with pytest.warns(HpctrainWarning, match="skipping the damaged checkpoint"):
        path, payload = ckpt.load_latest(str(tmp_path))
    assert path == second and torch.equal(payload["w"], torch.full((2,), 2.0))


def _holder(directory):
    """Another process that takes the folder's lock and holds it until its stdin closes."""
    import subprocess
    import sys

    code = ("import sys; from hpctrain.engine.folder_lock import FolderLock; "
            f"FolderLock({str(directory)!r}).acquire(); print('held', flush=True); sys.stdin.read()")
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_run_on_a_folder_in_use_is_refused_naming_the_owner(tmp_path):
    import socket

    holder = _holder(tmp_path)
    try:
        with pytest.raises(CheckpointError) as error:
            _fit(tmp_path, 1)
        assert (f"the checkpoint folder {tmp_path} is in use by another run: process {holder.pid} on host "
                f"{socket.gethostname()}") in str(error.value)
        assert ckpt.checkpoint_files(str(tmp_path)) == []
    finally:
        holder.kill()
        holder.wait()
    with pytest.warns(HpctrainWarning, match=f"process {holder.pid} .* is gone; taking the folder over"):
        assert _fit(tmp_path, 1) == [0]
    assert len(ckpt.checkpoint_files(str(tmp_path))) == 1
    assert os.listdir(tmp_path) == [os.path.basename(ckpt.checkpoint_files(str(tmp_path))[0])]  # lock released


def test_the_same_process_resumes_after_a_fit_that_raised(tmp_path):
    trainer = _trainer()
    x, y = _data()
    config = CheckpointConfig(directory=str(tmp_path))

    class Stop(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0, checkpoint=config, callbacks=[Stop()])
    assert _fit(tmp_path, 2, trainer=trainer) == [1]


def _sgd(lr):
    return lambda params, device: torch.optim.SGD(params, lr=lr)


CHANGES = {
    "optimizer-class": (dict(optimizer="adam"), dict(optimizer="sgd"), {},
                        "the optimizer changed from Adam to SGD"),
    "optimizer-setting": (dict(optimizer=_sgd(0.1)), dict(optimizer=_sgd(0.05)), {},
                          "the optimizer's lr changed from 0.1 to 0.05"),
    "more-samples": ({}, {}, dict(rows=40), "the training data changed from 32 to 40 samples"),
}


@pytest.mark.parametrize("before, after, data, message", CHANGES.values(), ids=CHANGES.keys())
def test_a_resume_with_changed_settings_says_what_changed_and_can_accept_it(tmp_path, before, after, data, message):
    _fit(tmp_path, 1, trainer=_trainer(**before))
    with pytest.raises(CheckpointError) as error:
        _fit(tmp_path, 2, trainer=_trainer(**after), data=_data(**data))
    assert message in str(error.value)
    assert "CheckpointConfig(..., allow_changes=True)" in str(error.value)
    trainer = _trainer(**after)
    assert _fit(tmp_path, 2, trainer=trainer, data=_data(**data), allow_changes=True) == [1]
    if "lr changed" in message:
        assert trainer.optimizer.param_groups[0]["lr"] == 0.05  # the accepted setting, not the saved one


def test_a_resume_with_a_changed_model_names_the_weights_that_changed(tmp_path):
    _fit(tmp_path, 1, trainer=_trainer(width=8))
    for allow in (False, True):
        with pytest.raises(CheckpointError) as error:
            _fit(tmp_path, 2, trainer=_trainer(width=16), allow_changes=allow)
        assert ("the model changed: 0.weight shaped (8, 4) is now (16, 4), 0.bias shaped (8,) is now (16,), "
                "2.weight shaped (3, 8) is now (3, 16)") in str(error.value)
        assert "A changed model cannot resume" in str(error.value)


def test_a_resume_with_the_same_settings_after_a_rate_callback_is_not_a_change(tmp_path):
    trainer = _trainer(optimizer=_sgd(0.1))

    class Halve(Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.optimizer.param_groups[0]["lr"] /= 2

    x, y = _data()
    config = CheckpointConfig(directory=str(tmp_path))
    trainer.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0, checkpoint=config, callbacks=[Halve()])
    assert _fit(tmp_path, 2, trainer=_trainer(optimizer=_sgd(0.1))) == [1]  # a fresh process, same settings
    assert _fit(tmp_path, 3, trainer=trainer) == [2]  # the same process, its rate as the callback left it
