"""Learning-rate schedules: Keras's closed forms, applied per update in both executors like a torch loop."""

import math

import numpy as np
import pytest
import torch

from conftest import small_classification
from hpctrain.errors import ConfigError
from hpctrain.keras import optimizers
from hpctrain.keras.callbacks import Callback, LearningRateScheduler
from hpctrain.keras.layers import Dense
from hpctrain.keras.models import Sequential
from hpctrain.keras.optimizers.schedules import CosineDecay, ExponentialDecay, PiecewiseConstantDecay


def test_exponential_decay_matches_the_closed_form():
    smooth = ExponentialDecay(0.1, decay_steps=4, decay_rate=0.5)
    stairs = ExponentialDecay(0.1, decay_steps=4, decay_rate=0.5, staircase=True)
    for step in range(12):
        assert smooth(step) == pytest.approx(0.1 * 0.5 ** (step / 4), rel=1e-12)
        assert stairs(step) == pytest.approx(0.1 * 0.5 ** (step // 4), rel=1e-12)
    assert [stairs(s) for s in (3, 4, 8)] == pytest.approx([0.1, 0.05, 0.025])


def test_cosine_decay_matches_the_closed_form_with_and_without_warmup():
    plain = CosineDecay(0.2, decay_steps=10, alpha=0.1)
    for step in range(15):
        fraction = min(step, 10) / 10
        assert plain(step) == pytest.approx(0.2 * (0.9 * 0.5 * (1 + math.cos(math.pi * fraction)) + 0.1), rel=1e-12)
    assert plain(5) == pytest.approx(0.2 * (0.9 * 0.5 + 0.1))
    warm = CosineDecay(0.0, decay_steps=8, warmup_target=0.4, warmup_steps=4)
    assert [warm(s) for s in range(5)] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])  # linear warmup, then the peak
    assert warm(8) == pytest.approx(0.2)  # half-way down the cosine
    assert warm(12) == pytest.approx(0.0) and warm(100) == pytest.approx(0.0)


def test_piecewise_constant_decay_steps_after_each_boundary():
    schedule = PiecewiseConstantDecay([3, 6], [1.0, 0.5, 0.1])
    assert [schedule(s) for s in range(9)] == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.1, 0.1]


def test_schedules_reject_bad_arguments():
    with pytest.raises(ConfigError, match=r"decay_steps must be a number > 0; got 0"):
        ExponentialDecay(0.1, decay_steps=0, decay_rate=0.9)
    with pytest.raises(ConfigError, match=r"one value more than boundaries; got 2 boundaries \[1, 2\] and 2 values"):
        PiecewiseConstantDecay([1, 2], [0.1, 0.2])
    with pytest.raises(ConfigError, match=r"boundaries must increase strictly; got \[5, 2\]"):
        PiecewiseConstantDecay([5, 2], [0.1, 0.2, 0.3])


SCHEDULE = PiecewiseConstantDecay([2, 5], [0.05, 0.02, 0.005])


def _torch_reference(initial, x, y, make_torch_optimizer, steps_per_epoch, epochs, batch):
    """The same updates by a plain torch loop setting each update's rate to SCHEDULE(update index)."""
    w, b = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in initial)
    optimizer = make_torch_optimizer([w, b])
    x, y = torch.tensor(x, dtype=torch.float64), torch.tensor(y)
    update = 0
    for _ in range(epochs):
        for start in range(0, steps_per_epoch * batch, batch):
            for group in optimizer.param_groups:
                group["lr"] = SCHEDULE(update)
            loss = torch.nn.functional.cross_entropy(x[start:start + batch] @ w + b, y[start:start + batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            update += 1
    return [w.detach().numpy(), b.detach().numpy()]


OPTIMIZERS = {
    "adam": (lambda: optimizers.Adam(learning_rate=SCHEDULE),
             lambda params: torch.optim.Adam(params, lr=0.0, eps=1e-7)),
    "rmsprop": (lambda: optimizers.RMSprop(learning_rate=SCHEDULE),
                lambda params: torch.optim.RMSprop(params, lr=0.0, alpha=0.9, eps=1e-7)),
}


@pytest.mark.parametrize("run_eagerly", [False, True], ids=["static", "autograd"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_schedule_sets_every_updates_rate_like_a_torch_loop(name, run_eagerly, rng):
    make_optimizer, make_torch_optimizer = OPTIMIZERS[name]
    x, y = small_classification(rng, n=32, features=5, classes=3)
    model = Sequential([Dense(3, activation="softmax", input_dim=5)])
    model.compile(optimizer=make_optimizer(), loss="sparse_categorical_crossentropy", run_eagerly=run_eagerly)
    initial = model.get_weights()
    model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)  # 8 updates: steps 0..7
    assert model.plan.executor == ("autograd" if run_eagerly else "static")
    expected = _torch_reference(initial, x, y, make_torch_optimizer, steps_per_epoch=4, epochs=2, batch=8)
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert model.optimizer.learning_rate == pytest.approx(SCHEDULE(8))  # the rate of the next update, as Keras


def test_a_callback_reads_the_scheduled_rate_and_cannot_set_it(rng):
    x, y = small_classification(rng, n=24, features=5, classes=3)
    schedule = ExponentialDecay(0.1, decay_steps=3, decay_rate=0.5)

    class RecordRate(Callback):
        def __init__(self):
            super().__init__()
            self.rates = []

        def on_train_batch_begin(self, batch, logs=None):
            self.rates.append(self.model.optimizer.learning_rate)

    recorder = RecordRate()
    model = Sequential([Dense(3, activation="softmax", input_dim=5)])
    model.compile(optimizer=optimizers.SGD(learning_rate=schedule), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[recorder])
    assert recorder.rates == pytest.approx([schedule(step) for step in range(6)])
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[recorder])  # a second fit carries on counting
    assert recorder.rates[6:] == pytest.approx([schedule(step) for step in range(6, 9)])
    with pytest.raises(ConfigError, match="learning rate follows ExponentialDecay, so it cannot be set"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[LearningRateScheduler(lambda epoch: 0.1)])


def test_a_callback_sets_a_fixed_rate(rng):
    x, y = small_classification(rng, n=24, features=5, classes=3)

    class Halve(Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.optimizer.learning_rate = self.model.optimizer.learning_rate / 2

    model = Sequential([Dense(3, activation="softmax", input_dim=5)])
    model.compile(optimizer=optimizers.Adam(learning_rate=0.08), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=3, verbose=0, callbacks=[Halve()])
    assert model.optimizer.learning_rate == pytest.approx(0.01)
    assert model.optimizer.torch_optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
