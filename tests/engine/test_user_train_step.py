"""The native API's own train_step: used by fit, with callbacks and exact resume around it."""

import numpy as np
import pytest
import torch

from hpctrain import make_plan
from hpctrain.engine import Trainer
from hpctrain.engine.callbacks import Callback
from hpctrain.engine.checkpoint import CheckpointConfig

CLIP = 0.05


class ClippingTrainer(Trainer):
    """Clips the gradient norm between backward and the update, as a user would add it."""

    def train_step(self, x, y):
        prediction = self.forward(x)
        loss = self.compute_loss(prediction, y)
        self.backward(loss)
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), CLIP)
        self.apply_update()
        return loss, prediction


def _module():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    return x, (x @ rng.normal(size=(6, 3))).argmax(1)


def _trainer(kind=ClippingTrainer):
    return kind(_module(), loss=torch.nn.CrossEntropyLoss(), optimizer=lambda params, device: torch.optim.SGD(
        params, lr=0.01), metrics=["accuracy"], plan=make_plan(threads=1))


def _reference_weights(epochs: int):
    """Plain PyTorch: the same clipped SGD steps, in order (no shuffling)."""
    module = _module()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01)
    x, y = (torch.from_numpy(a) for a in _data())
    for _ in range(epochs):
        for start in range(0, len(x), 16):
            loss = torch.nn.functional.cross_entropy(module(x[start:start + 16]), y[start:start + 16])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), CLIP)
            optimizer.step()
    return [p.detach().numpy() for p in module.parameters()]


def _weights(trainer):
    return [p.detach().numpy() for p in trainer.module.parameters()]


def test_fit_uses_the_overridden_train_step_and_says_so():
    x, y = _data()
    trainer = _trainer()
    history = trainer.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    for ours, reference in zip(_weights(trainer), _reference_weights(2), strict=True):
        np.testing.assert_allclose(ours, reference, atol=1e-6)
    assert "executor: autograd (the trainer defines its own train_step)" in trainer.plan.explain()
    assert len(history.history["loss"]) == 2 and "accuracy" in history.history
    plain = _trainer(Trainer)
    plain.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    assert max(float(np.abs(a - b).max()) for a, b in zip(_weights(plain), _weights(trainer))) > 1e-4


class _StopAt(Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt  # a kill between epochs


def test_an_interrupted_run_resumes_through_the_own_train_step_exactly(tmp_path):
    x, y = _data()
    config = CheckpointConfig(directory=str(tmp_path / "run"))
    interrupted = _trainer()
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(x, y, epochs=4, batch_size=16, shuffle=False, verbose=0, checkpoint=config,
                        callbacks=[_StopAt(1)])
    resumed = _trainer()
    history = resumed.fit(x, y, epochs=4, batch_size=16, shuffle=False, verbose=0, checkpoint=config)
    assert history.epoch == [0, 1, 2, 3] or history.epoch == [2, 3]
    for ours, reference in zip(_weights(resumed), _reference_weights(4), strict=True):
        np.testing.assert_allclose(ours, reference, atol=1e-6)


def test_two_launched_replicas_run_the_own_train_step_as_one_process(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    here = os.path.dirname(os.path.abspath(__file__))
    out = tmp_path / "weights.npz"
    done = subprocess.run([sys.executable, "-m", "hpctrain.cli", "launch", "--nproc-per-node=2",
                           f"--master-port={port}", os.path.join(here, "own_step_program.py"), str(out)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])})
    assert done.returncode == 0, done.stderr[-2000:]
    with np.load(out) as saved:
        replicated = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    for ours, reference in zip(replicated, _reference_weights(2), strict=True):
        np.testing.assert_allclose(ours, reference, atol=1e-6)
