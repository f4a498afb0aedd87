"""A torch module of the user's own inside an ``nn.Sequential`` whose forward reads as linear
layers, activations and a residual sum trains on the static executor, equal to autograd; any
other forward keeps the model on autograd."""

import pytest
import torch
import torch.nn.functional as F

import hpctrain
from hpctrain.engine.losses import CrossEntropy
from hpctrain.engine.static_layers import (
    Activation,
    Linear,
    ResidualAdd,
    ResidualStart,
    torch_sequential_layers,
)
from hpctrain.engine.traced_layers import traced_module_layers


class Residual(torch.nn.Module):
    """``x + relu(fc(x))`` with an ``nn.Linear``."""

    def __init__(self, width):
        super().__init__()
        self.fc = torch.nn.Linear(width, width)

    def forward(self, x):
        return x + torch.relu(self.fc(x))


class Bottleneck(torch.nn.Module):
    """``x + tanh(x @ down + bias) @ up``: weights of its own, (in, out), in operators."""

    def __init__(self, width, inner=3):
        super().__init__()
        self.down = torch.nn.Parameter(torch.randn(width, inner) * 0.3)
        self.bias = torch.nn.Parameter(torch.zeros(inner))
        self.up = torch.nn.Parameter(torch.randn(inner, width) * 0.3)

    def forward(self, x):
        return torch.tanh(x @ self.down + self.bias) @ self.up + x


class Forward(torch.nn.Module):
    """A module whose forward the test gives; ``fc`` is its one weight-bearing part."""

    def __init__(self, forward, width=6, norm=False):
        super().__init__()
        self.fc = torch.nn.Linear(width, width)
        self.norm = torch.nn.BatchNorm1d(width) if norm else None
        self._forward = forward

    def forward(self, x):
        return self._forward(self, x)


def test_residual_modules_read_as_static_layers():
    assert [type(p) for p in traced_module_layers(Residual(6), 6)] == [ResidualStart, Linear, Activation,
                                                                          ResidualAdd]
    block = Bottleneck(6)
    described = traced_module_layers(block, 6)
    assert [type(p) for p in described] == [ResidualStart, Linear, Activation, Linear, ResidualAdd]
    assert described[1].weight is block.down and described[1].bias is block.bias and not described[1].transposed
    assert traced_module_layers(Residual(6), 5) is None  # the probe's width does not fit: the call fails


DECLINED = {
    "gelu": lambda: Forward(lambda s, x: x + F.gelu(s.fc(x))),
    "dropout": lambda: Forward(lambda s, x: x + F.dropout(torch.relu(s.fc(x)), 0.5)),
    "running_statistics": lambda: Forward(lambda s, x: x + s.norm(s.fc(x)), norm=True),
    "weight_used_twice": lambda: Forward(lambda s, x: s.fc(s.fc(x))),
    "scaled": lambda: Forward(lambda s, x: x + 0.5 * s.fc(x)),
}


@pytest.mark.parametrize("name", sorted(DECLINED))
def test_other_forwards_are_not_described(name):
    assert traced_module_layers(DECLINED[name](), 6) is None


def _net(block):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(9, 6), torch.nn.ReLU(), block(6), block(6), torch.nn.Linear(6, 4))


@pytest.mark.parametrize("block", [Residual, Bottleneck])
def test_a_sequential_with_residual_modules_trains_static_as_autograd(rng, block):
    assert [type(p) for p in torch_sequential_layers(_net(block))][2] is ResidualStart
    x, y = rng.normal(size=(100, 9)).astype("float32"), rng.integers(0, 4, size=100)
    results = {}
    for executor in ("static", "autograd"):
        net = _net(block)
        trainer = hpctrain.Trainer(net, loss=CrossEntropy(sparse=True, from_logits=True), optimizer="adam",
                                   plan=hpctrain.make_plan(executor=executor))
        torch.manual_seed(5)
        history = trainer.fit(x, y, epochs=2, batch_size=16, verbose=0)
        assert trainer.plan.executor == executor
        results[executor] = [p.detach().clone() for p in net.parameters()], history.history["loss"]
    for got, expected in zip(results["static"][0], results["autograd"][0], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(results["static"][1]), torch.tensor(results["autograd"][1]), rtol=1e-5,
                               atol=0)


class _Mutating(torch.nn.Module):
    """A forward that writes into its weight: through an alias (``.data``), or in place."""

    def __init__(self, how, width=6):
        super().__init__()
        self.fc = torch.nn.Linear(width, width)
        self.how = how

    def forward(self, x):
        if self.how == "alias":
            self.fc.weight.data.mul_(2.0)
        elif self.how == "in_place":
            with torch.no_grad():
                self.fc.bias.add_(1.0)
        else:  # the error the probe raises, caught: nothing after it runs either
            try:
                x.mean()
            except Exception:  # noqa: BLE001, S110 - a user call that swallows errors
                pass
            with torch.no_grad():
                self.fc.weight.zero_()
        return x + torch.relu(self.fc(x))


@pytest.mark.parametrize("how", ["alias", "in_place", "after_a_caught_refusal"])
def test_the_probe_never_writes_into_the_weights(how):
    block = _Mutating(how)
    before = [p.detach().clone() for p in block.parameters()]
    assert traced_module_layers(block, 6) is None
    for got, expected in zip(block.parameters(), before, strict=True):
        assert torch.equal(got, expected)


def test_the_plan_names_the_module_the_trace_did_not_describe_and_why(rng):
    net = torch.nn.Sequential(torch.nn.Linear(9, 6), DECLINED["gelu"](), torch.nn.Linear(6, 4))
    trainer = hpctrain.Trainer(net, loss=CrossEntropy(sparse=True, from_logits=True), optimizer="adam")
    trainer.fit(rng.normal(size=(32, 9)).astype("float32"), rng.integers(0, 4, size=32), verbose=0)
    assert dict(trainer.plan.reasons)["executor"] == (
        "autograd (some layer has no backward the engine knows: layer 1 (Forward): "
        "torch.nn.functional.gelu is not a product, sum or activation)")


class _NarrowBranch(torch.nn.Module):
    """``x + relu(fc(x))`` whose branch is one wide: the sum broadcasts it over the row."""

    def __init__(self, width=6):
        super().__init__()
        self.fc = torch.nn.Linear(width, 1)

    def forward(self, x):
        return x + torch.relu(self.fc(x))


def test_a_residual_sum_that_broadcasts_keeps_the_model_on_autograd(rng):
    net = torch.nn.Sequential(torch.nn.Linear(9, 6), _NarrowBranch(), torch.nn.Linear(6, 4))
    trainer = hpctrain.Trainer(net, loss=CrossEntropy(sparse=True, from_logits=True), optimizer="adam")
    trainer.fit(rng.normal(size=(32, 9)).astype("float32"), rng.integers(0, 4, size=32), verbose=0)
    assert dict(trainer.plan.reasons)["executor"] == "autograd (a residual branch changes its input's width)"
