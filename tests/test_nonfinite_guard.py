"""The non-finite guard: a NaN/Inf at a known step stops training with that epoch and step named,
the weights from before the step, and the last good checkpoint kept."""

import os

import numpy as np
import pytest
import torch

import hpctrain as tf
from hpctrain.engine import Trainer
from hpctrain.engine.checkpoint import CheckpointConfig, checkpoint_files
from hpctrain.errors import NonFiniteLossError
from hpctrain.keras.callbacks import Callback


class WeightsBeforeStep(Callback):
    """Records the weights at the start of global step ``at`` (1-based)."""

    def __init__(self, at):
        super().__init__()
        self.at, self.seen, self.weights = at, 0, None

    def on_train_batch_begin(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            self.weights = self.model.get_weights()


def _trainer(loss, optimizer):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    return Trainer(module, loss=loss, optimizer=optimizer, plan=tf.make_plan(threads=1))


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(40, 6)).astype("float32"), rng.normal(size=(40, 2)).astype("float32")


def test_static_executor_stops_at_the_overflowing_step_and_keeps_the_last_checkpoint(tmp_path):
    x, y = _data()
    clean = WeightsBeforeStep(at=3)
    _trainer(torch.nn.MSELoss(), "adam").fit(x, y, batch_size=5, epochs=1, shuffle=False, verbose=0, callbacks=[clean])
    x_bad = x.copy()
    x_bad[12] = 3e38  # in the 3rd batch of 5 rows: the outputs and gradients overflow to inf
    trainer = _trainer(torch.nn.MSELoss(), "adam")
    directory = str(tmp_path / "backup")
    with pytest.raises(NonFiniteLossError, match=r"at epoch 1, step 3 of 4 done in that epoch") as error:
        trainer.fit(x_bad, y, batch_size=5, epochs=2, shuffle=False, verbose=0,
                    checkpoint=CheckpointConfig(directory=directory, save_freq=2))
    assert trainer.plan.executor == "static"
    kept = checkpoint_files(directory)
    assert [os.path.basename(p) for p in kept] == ["ckpt-00000001.safetensors"]  # saved after step 2 only
    assert f"The last good checkpoint, {kept[0]}, is kept." in str(error.value)
    for ours, theirs in zip(trainer.get_weights(), clean.weights):
        assert np.array_equal(ours, theirs)  # every update from the bad step on was skipped


class PoisonStep(WeightsBeforeStep):
    """Makes the loss of global step ``at`` NaN (and records the weights from before it)."""

    def on_train_batch_begin(self, batch, logs=None):
        super().on_train_batch_begin(batch, logs)
        self.poisoned = self.seen == self.at


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "rmsprop"])
def test_autograd_stops_at_the_step_whose_loss_is_nan(optimizer):
    x, y = _data()
    poison = PoisonStep(at=11)  # epoch 2 (8 steps each), step 3

    def loss(prediction, target):
        value = torch.nn.functional.mse_loss(prediction, target)
        return value * float("nan") if getattr(poison, "poisoned", False) else value

    clean = WeightsBeforeStep(at=11)
    _trainer(torch.nn.functional.mse_loss, optimizer).fit(x, y, batch_size=5, epochs=2, verbose=0,
                                                          callbacks=[clean])
    trainer = _trainer(loss, optimizer)
    with pytest.raises(NonFiniteLossError, match=r"at epoch 2, step 3 of 8 done in that epoch"):
        trainer.fit(x, y, batch_size=5, epochs=3, verbose=0, callbacks=[poison])
    assert trainer.plan.executor == "autograd"
    for ours, theirs in zip(trainer.get_weights(), clean.weights):
        assert np.array_equal(ours, theirs)
    assert np.array_equal(poison.weights[0], clean.weights[0])
