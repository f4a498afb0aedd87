"""The non-finite guard: a NaN/Inf at a known step stops training with that epoch, step and first
non-finite value named, the weights from before the step, and the last good checkpoint kept; with
on_nonfinite="skip_step" the bad steps are skipped and the run equals one without their batches."""

import os

import numpy as np
import pytest
import torch

import hpctrain as tf
from hpctrain.engine import Trainer
from hpctrain.engine.checkpoint import CheckpointConfig, checkpoint_files
from hpctrain.engine.guard import first_nonfinite_output
from hpctrain.engine.optim import as_torch_optimizer
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


def _trainer(loss, optimizer, executor="auto"):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    return Trainer(module, loss=loss, optimizer=optimizer, plan=tf.make_plan(threads=1, executor=executor))


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
    with pytest.raises(NonFiniteLossError, match=r"at epoch 1, step 3 of 4 done in that epoch; the first "
                                                 r"non-finite value was the loss \(inf\)\.") as error:
        trainer.fit(x_bad, y, batch_size=5, epochs=2, shuffle=False, verbose=0,
                    checkpoint=CheckpointConfig(directory=directory, save_freq=2))
    assert trainer.plan.executor == "static"
    kept = checkpoint_files(directory)
    assert [os.path.basename(p) for p in kept] == ["ckpt-00000001.safetensors"]  # saved after step 2 only
    assert f"The last good checkpoint, {kept[0]}, is kept." in str(error.value)
    for ours, theirs in zip(trainer.get_weights(), clean.weights):
        assert np.array_equal(ours, theirs)  # every update from the bad step on was skipped
    steps = [float(state["step"]) for state in as_torch_optimizer(trainer.optimizer).state_dict()["state"].values()]
    assert steps == [2.0] * 4  # the skipped updates are not counted, as torch.optim counts them


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

    clean = WeightsBeforeStep(at=11)  # on the same executor, so equal means bitwise equal
    _trainer(torch.nn.functional.mse_loss, optimizer, "autograd").fit(x, y, batch_size=5, epochs=2, verbose=0,
                                                                      callbacks=[clean])
    trainer = _trainer(loss, optimizer)
    # The poison is gone when the step is recomputed after the stop, so the message says so.
    with pytest.raises(NonFiniteLossError, match=r"at epoch 2, step 3 of 8 done in that epoch \(recomputed on that "
                                                 r"step's batch everything is finite: the step is not reproducible\)"):
        trainer.fit(x, y, batch_size=5, epochs=3, verbose=0, callbacks=[poison])
    assert trainer.plan.executor == "autograd"
    for ours, theirs in zip(trainer.get_weights(), clean.weights):
        assert np.array_equal(ours, theirs)
    assert np.array_equal(poison.weights[0], clean.weights[0])


# --- on_nonfinite="skip_step" and the name of the first non-finite value --------------------------

BAD_BATCHES = (2, 5)  # 0-based batches of 5 rows whose loss is not finite


def _bad_rows():
    return [5 * batch + 2 for batch in BAD_BATCHES]


def _without_bad_batches(x, y):
    keep = np.ones(len(x), dtype=bool)
    for batch in BAD_BATCHES:
        keep[5 * batch:5 * batch + 5] = False
    return x[keep], y[keep]


def _marked_nan_loss(prediction, target):
    """Mean squared error, NaN for a batch holding a target row marked with 1000."""
    value = ((prediction - target) ** 2).mean()
    return torch.where((target >= 1000).any(), torch.full_like(value, float("nan")), value)


def _assert_same_run(trainer, history, reference, reference_history, epochs):
    assert history.history["skipped_steps"] == [len(BAD_BATCHES)] * epochs
    assert all(np.isfinite(history.history["loss"]))
    np.testing.assert_allclose(history.history["loss"], reference_history.history["loss"], rtol=1e-5)
    for ours, theirs in zip(trainer.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


def test_static_adam_skips_the_overflowing_steps_and_equals_a_run_without_their_batches():
    x, y = _data()
    x_bad = x.copy()
    x_bad[_bad_rows()] = 3e38  # outputs and gradients of those batches overflow to inf
    trainer = _trainer(torch.nn.MSELoss(), "adam")
    history = trainer.fit(x_bad, y, batch_size=5, epochs=2, shuffle=False, verbose=0, on_nonfinite="skip_step")
    assert trainer.plan.executor == "static"
    reference = _trainer(torch.nn.MSELoss(), "adam")
    reference_history = reference.fit(*_without_bad_batches(x, y), batch_size=5, epochs=2, shuffle=False, verbose=0)
    assert "skipped_steps" not in reference_history.history  # only skip mode reports it
    _assert_same_run(trainer, history, reference, reference_history, epochs=2)


@pytest.mark.parametrize("optimizer", ["sgd", "rmsprop"])  # a fused kernel; a flag read per step
def test_autograd_skips_the_steps_whose_loss_is_nan_and_equals_a_run_without_their_batches(optimizer):
    x, y = _data()
    y_marked = y.copy()
    y_marked[_bad_rows()] = 1000.0
    trainer = _trainer(_marked_nan_loss, optimizer)
    history = trainer.fit(x, y_marked, batch_size=5, epochs=2, shuffle=False, verbose=0, on_nonfinite="skip_step")
    assert trainer.plan.executor == "autograd"
    reference = _trainer(_marked_nan_loss, optimizer)
    reference_history = reference.fit(*_without_bad_batches(x, y), batch_size=5, epochs=2, shuffle=False, verbose=0)
    _assert_same_run(trainer, history, reference, reference_history, epochs=2)


def test_keras_fit_takes_on_nonfinite_and_rejects_an_unknown_mode():
    x, y = _data()
    x_bad = x.copy()
    x_bad[_bad_rows()] = 3e38
    model = tf.keras.Sequential([tf.keras.Input(shape=(6,)), tf.keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    history = model.fit(x_bad, y, batch_size=5, epochs=1, shuffle=False, verbose=0, on_nonfinite="skip_step")
    assert history.history["skipped_steps"] == [len(BAD_BATCHES)]
    assert np.isfinite(history.history["loss"][0])
    with pytest.raises(tf.errors.ConfigError, match=r"on_nonfinite must be 'raise' .* got 'skip'"):
        model.fit(x, y, verbose=0, on_nonfinite="skip")


def test_stop_names_the_loss_when_the_loss_went_nan_first():
    x, y = _data()
    y_marked = y.copy()
    y_marked[_bad_rows()[0]] = 1000.0
    trainer = _trainer(_marked_nan_loss, "sgd")
    with pytest.raises(NonFiniteLossError, match=r"at epoch 1, step 3 of 8 done in that epoch; the first "
                                                 r"non-finite value was the loss \(nan\)\."):
        trainer.fit(x, y_marked, batch_size=5, epochs=1, shuffle=False, verbose=0)


class NanGradient(torch.autograd.Function):
    """The identity forward; a NaN gradient backward."""

    @staticmethod
    def forward(ctx, value):
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def test_first_nonfinite_output_names_a_layer_output_else_the_gradient_nearest_the_output():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x, y = (torch.as_tensor(a[:5]) for a in _data())
    finite_loss_nan_gradient = lambda p, t: torch.nn.functional.mse_loss(NanGradient.apply(p), t)  # noqa: E731
    assert first_nonfinite_output(module, finite_loss_nan_gradient, x, y) == "the gradient of '2.bias'"
    assert module[0].weight.grad is None  # recomputed aside: .grad untouched
    x[1] = float("inf")
    assert first_nonfinite_output(module, torch.nn.functional.mse_loss, x, y) == "the output of layer '0' (Linear)"
    assert first_nonfinite_output(module, torch.nn.functional.mse_loss, x[2:], y[2:]) is None


def test_labels_whose_squared_error_overflows_are_refused_before_training():
    """A label of 1e20 makes the squared error inf while its gradient stays finite: refused at
    the start, with what to do, rather than wrecking the weights."""
    from hpctrain.errors import InputError
    from hpctrain.keras.layers import Dense
    from hpctrain.keras.models import Sequential

    x = np.ones((8, 4), dtype="float32")
    y = np.ones(8, dtype="float32")
    y[5] = 1e20
    model = Sequential([Dense(1, input_shape=(4,))])
    model.compile(optimizer=tf.keras.optimizers.SGD(0.01), loss="mse")
    with pytest.raises(InputError, match=r"the labels go up to 1e\+20 in magnitude: their squared error overflows"):
        model.fit(x, y, verbose=0)


def test_an_epoch_with_every_step_skipped_stops_fit_instead_of_logging_a_perfect_loss():
    x, y = _data()
    trainer = _trainer(torch.nn.MSELoss(), "adam")
    with pytest.raises(NonFiniteLossError, match=r"every step of epoch 1 was non-finite and skipped \(\d+ steps\)"):
        trainer.fit(np.full_like(x, 3e38), y, batch_size=5, epochs=2, verbose=0, on_nonfinite="skip_step")
