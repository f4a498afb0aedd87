"""Statistics that the forward pass updates (batch norm's running mean and variance) keep their
last good values through a non-finite step, in both ``on_nonfinite`` modes, as the weights do."""

import numpy as np
import pytest
import torch

import hpctrain
from hpctrain.errors import NonFiniteLossError

CPU = hpctrain.make_plan(device="cpu")
HUGE = 3e38  # finite, but a linear layer's output overflows to inf and batch norm's mean to NaN


class ParameterBatchNorm(torch.nn.Module):
    """Batch normalization whose moving statistics are Parameters that take no gradient, as
    Keras's BatchNormalization keeps its moving_mean and moving_variance."""

    def __init__(self, width: int, momentum: float = 0.1):
        super().__init__()
        self.momentum = momentum
        self.moving_mean = torch.nn.Parameter(torch.zeros(width), requires_grad=False)
        self.moving_variance = torch.nn.Parameter(torch.ones(width), requires_grad=False)

    def forward(self, x):
        if self.training:
            mean, variance = x.mean(0), x.var(0, unbiased=False)
            with torch.no_grad():
                self.moving_mean.lerp_(mean.detach(), self.momentum)
                self.moving_variance.lerp_(variance.detach(), self.momentum)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        return (x - mean) / torch.sqrt(variance + 1e-3)


def _net(norm):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), norm, torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _torch_norm():
    return torch.nn.BatchNorm1d(8)


def _statistics(module):
    norm = module[1]
    if isinstance(norm, torch.nn.BatchNorm1d):
        return [norm.running_mean, norm.running_var, norm.num_batches_tracked]
    return [norm.moving_mean, norm.moving_variance]


def _trainer(module, statistics=None):
    extra = {} if statistics is None else {"statistics": statistics}
    return hpctrain.Trainer(module, loss=torch.nn.CrossEntropyLoss(), plan=CPU,
                            optimizer=torch.optim.SGD(module.parameters(), lr=0.1), **extra)


def _good(rows=16):
    rng = np.random.default_rng(0)
    return rng.normal(size=(rows, 4)).astype("float32"), rng.integers(0, 3, size=rows)


def _bad(rows=8):
    return np.full((rows, 4), HUGE, dtype="float32"), np.zeros(rows, dtype=np.int64)


NORMS = [pytest.param(_torch_norm, False, id="torch-buffers"),
         pytest.param(lambda: ParameterBatchNorm(8), True, id="parameters-named-by-the-front-end")]


@pytest.mark.parametrize("make_norm, named", NORMS)
def test_a_stopped_run_keeps_the_statistics_from_before_the_bad_step(make_norm, named):
    module = _net(make_norm())
    trainer = _trainer(module, statistics=_statistics(module) if named else None)
    x, y = _good()
    trainer.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    before = [tensor.clone() for tensor in _statistics(module)]
    bad_x, bad_y = _bad()
    with pytest.raises(NonFiniteLossError):
        trainer.fit(bad_x, bad_y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    for kept, expected in zip(_statistics(module), before):
        assert torch.equal(kept, expected)
    assert np.isfinite(trainer.predict(x)).all()


@pytest.mark.parametrize("make_norm, named", NORMS)
def test_a_skipped_step_leaves_the_statistics_as_if_its_batch_was_never_seen(make_norm, named):
    x, y = _good()
    bad_x, bad_y = _bad()
    skipping = _net(make_norm())
    trainer = _trainer(skipping, statistics=_statistics(skipping) if named else None)
    history = trainer.fit(np.concatenate([bad_x, x]), np.concatenate([bad_y, y]), epochs=1, batch_size=8,
                          shuffle=False, verbose=0, on_nonfinite="skip_step")
    assert history.history["skipped_steps"] == [1]
    reference = _net(make_norm())
    _trainer(reference).fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    for got, expected in zip(_statistics(skipping), _statistics(reference)):
        # Equal up to the rounding of reductions split over another thread count.
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert np.isfinite(trainer.predict(x)).all()


def _update_count(trainer) -> int:
    from hpctrain.engine.optim import update_count

    counted = update_count(trainer.optimizer)
    return trainer.optimizer.scheduled_updates if counted is None else counted


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop"])
@pytest.mark.parametrize("mode", ["skip_step", "raise"])
def test_the_update_count_leaves_out_skipped_steps(optimizer, mode):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    trainer = hpctrain.Trainer(module, loss=torch.nn.CrossEntropyLoss(), optimizer=optimizer, plan=CPU)
    x, y = _good(24)
    bad_x, bad_y = _bad()
    x, y = np.concatenate([x[:8], bad_x, x[8:]]), np.concatenate([y[:8], bad_y, y[8:]])  # step 2 of 4 is bad
    if mode == "raise":
        with pytest.raises(NonFiniteLossError):
            trainer.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
        assert _update_count(trainer) == 1  # training stopped after the one good update
    else:
        trainer.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0, on_nonfinite="skip_step")
        assert _update_count(trainer) == 6  # 2 epochs of 4 steps, one skipped in each
