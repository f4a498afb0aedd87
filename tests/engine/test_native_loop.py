"""The C++ step loop through the native API: the same kernels as the static step's Python loop
(bit-identical weights), and the weights of a plain PyTorch training loop to 1e-5."""

import numpy as np
import pytest
import torch

import hpctrain
from hpctrain.engine.callbacks import Callback
from hpctrain.engine.losses import BinaryCrossentropy, CrossEntropy, MeanAbsoluteError, MeanSquaredError
from hpctrain.engine.static_layers import Activation, Linear, ResidualAdd, ResidualStart
from hpctrain.errors import NonFiniteLossError

pytestmark = pytest.mark.native_loop


def _step_loop_line(trainer) -> str:
    return next((line for line in trainer.plan.explain().splitlines() if line.startswith("step_loop")), "")


def _fit(monkeypatch, use_loop, make_net, loss, x, y, *, optimizer="adam", epochs=2, batch_size=16, shuffle=True,
         callbacks=()):
    monkeypatch.setenv("HPCTRAIN_NATIVE", "1" if use_loop else "0")
    torch.manual_seed(0)
    net = make_net()
    trainer = hpctrain.Trainer(net, loss=loss, optimizer=optimizer)
    torch.manual_seed(5)  # the shuffles' and dropout masks' stream
    history = trainer.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=shuffle, verbose=0,
                          callbacks=list(callbacks))
    return [p.detach().clone() for p in net.parameters()], history.history, _step_loop_line(trainer)


def _assert_identical(monkeypatch, *args, **kwargs):
    loop = _fit(monkeypatch, True, *args, **kwargs)
    python = _fit(monkeypatch, False, *args, **kwargs)
    assert loop[2].startswith("step_loop: C++"), loop[2]
    assert python[2] == "step_loop: Python (off (HPCTRAIN_NATIVE=0))"
    assert len(loop[0]) == len(python[0])
    for a, b in zip(loop[0], python[0]):
        assert torch.equal(a, b)  # bit for bit: the same kernels in the same order
    assert loop[1].keys() == python[1].keys()
    for key in python[1]:
        np.testing.assert_allclose(loop[1][key], python[1][key], rtol=1e-6)
    return loop


def _mlp(*middle, features=9, hidden=12, outputs=4):
    return lambda: torch.nn.Sequential(torch.nn.Linear(features, hidden), *middle, torch.nn.Linear(hidden, outputs))


class _ResidualNet(torch.nn.Module):
    """``relu(first x)``, then ``h + relu(branch h)``, then ``last``: told to the engine as static layers."""

    def __init__(self, features=9, hidden=12, outputs=4):
        super().__init__()
        self.first = torch.nn.Linear(features, hidden)
        self.branch = torch.nn.Linear(hidden, hidden)
        self.last = torch.nn.Linear(hidden, outputs)

    def forward(self, x):
        h = torch.relu(self.first(x))
        return self.last(h + torch.relu(self.branch(h)))

    def static_layers(self):
        def linear(layer):
            return Linear(layer.weight, layer.bias, transposed=True)

        return [linear(self.first), Activation("relu"), ResidualStart(), linear(self.branch), Activation("relu"),
                ResidualAdd(), linear(self.last)]


CASES = {  # model, loss, targets
    "relu_sparse_ce": (_mlp(torch.nn.ReLU()), CrossEntropy(sparse=True, from_logits=True), "labels"),
    "tanh_sigmoid_mse": (lambda: torch.nn.Sequential(torch.nn.Linear(9, 12), torch.nn.Tanh(), torch.nn.Linear(12, 6),
                                                     torch.nn.Sigmoid(), torch.nn.Linear(6, 3)),
                         MeanSquaredError(), "values"),
    "mae": (_mlp(torch.nn.ReLU(), hidden=5, outputs=3), MeanAbsoluteError(), "values"),
    "binary_ce": (_mlp(torch.nn.ReLU(), hidden=8, outputs=1), BinaryCrossentropy(from_logits=True), "binary"),
    "one_hot_ce": (_mlp(torch.nn.ReLU(), hidden=8), CrossEntropy(sparse=False, from_logits=True), "one_hot"),
    "residual_ce": (_ResidualNet, CrossEntropy(sparse=True, from_logits=True), "labels"),
}


def _targets(kind, rng, n):
    labels = rng.integers(0, 4, size=n)
    return {"labels": labels, "values": rng.normal(size=(n, 3)).astype("float32"),
            "binary": rng.integers(0, 2, size=(n, 1)).astype("float32"),
            "one_hot": np.eye(4, dtype="float32")[labels]}[kind]


@pytest.mark.parametrize("case", sorted(CASES))
def test_loop_and_python_steps_give_identical_weights(monkeypatch, rng, case):
    make_net, loss, kind = CASES[case]
    n = 100  # six batches of 16 and a partial one of 4: two programs
    x = rng.normal(size=(n, 9)).astype("float32")
    _assert_identical(monkeypatch, make_net, loss, x, _targets(kind, rng, n))


def test_loop_matches_unshuffled_and_adamw(monkeypatch, rng):
    x, y = rng.normal(size=(70, 9)).astype("float32"), rng.integers(0, 4, size=70)
    make_net, loss, _ = CASES["relu_sparse_ce"]
    adamw = lambda params, device: torch.optim.AdamW(params, lr=0.01, weight_decay=0.05, fused=True)  # noqa: E731
    _assert_identical(monkeypatch, make_net, loss, x, y, shuffle=False, optimizer=adamw)


@pytest.mark.parametrize("large_products", ["onednn", "chosen for this CPU"])
def test_loop_hands_onednn_gradients_like_the_python_step(monkeypatch, rng, large_products):
    """Batches of 256 through a 785x1024 layer: the weight gradient is oneDNN's and handed to Adam
    (where oneDNN takes large products; on an Intel CPU MKL writes it into the gradient buffer)."""
    from hpctrain.hardware import gemm

    if large_products == "onednn":
        monkeypatch.setattr(gemm, "large_product_linear", gemm.onednn_linear)
    x, y = rng.normal(size=(600, 784)).astype("float32"), rng.integers(0, 10, size=600)
    make_net = _mlp(torch.nn.ReLU(), features=784, hidden=1024, outputs=10)
    _assert_identical(monkeypatch, make_net, CrossEntropy(sparse=True, from_logits=True), x, y, batch_size=256,
                      epochs=1)


@pytest.mark.parametrize("middle", ["sigmoid", "relu_dropout"])
def test_dropout_draws_the_same_masks_in_the_loop(monkeypatch, rng, middle):
    """The mask is drawn by the same ATen calls from the same generator: the same values drop."""
    layers = {"sigmoid": [torch.nn.Sigmoid()], "relu_dropout": [torch.nn.ReLU(), torch.nn.Dropout(0.4)]}[middle]
    x, y = rng.normal(size=(60, 5)).astype("float32"), rng.integers(0, 3, size=60)
    _assert_identical(monkeypatch, _mlp(*layers, features=5, hidden=7, outputs=3),
                      CrossEntropy(sparse=True, from_logits=True), x, y, batch_size=8)


def test_loop_equals_a_plain_pytorch_training_loop(monkeypatch, rng):
    """Linear, ReLU, Linear with Adam through ``Trainer.fit`` on the C++ loop: after 2 epochs of 7
    steps the weights are those of ``torch.optim.Adam`` and autograd on the same batches, to 1e-5."""
    x, y = rng.normal(size=(100, 9)).astype("float32"), rng.integers(0, 4, size=100)
    make_net = _mlp(torch.nn.ReLU())
    weights, history, step_loop = _fit(monkeypatch, True, make_net, CrossEntropy(sparse=True, from_logits=True), x, y,
                                       shuffle=False)
    assert step_loop.startswith("step_loop: C++"), step_loop
    torch.manual_seed(0)
    reference = make_net()
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(2):
        for first in range(0, 100, 16):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(reference(xs[first:first + 16]), ys[first:first + 16]).backward()
            optimizer.step()
    for got, expected in zip(weights, reference.parameters(), strict=True):
        torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-5)
    assert history["loss"][1] < history["loss"][0]


def test_a_residual_branch_in_the_loop_equals_autograd(monkeypatch, rng):
    """The static layers' residual sum and its backward, on the C++ loop, give autograd's weights."""
    x, y = rng.normal(size=(100, 9)).astype("float32"), rng.integers(0, 4, size=100)
    loss = CrossEntropy(sparse=True, from_logits=True)
    loop, history, step_loop = _fit(monkeypatch, True, _ResidualNet, loss, x, y)
    assert step_loop.startswith("step_loop: C++"), step_loop
    monkeypatch.setattr(_ResidualNet, "static_layers", lambda self: None)  # no static layers: autograd
    reference, reference_history, step_loop = _fit(monkeypatch, False, _ResidualNet, loss, x, y)
    assert step_loop == ""  # autograd: no step loop
    for got, expected in zip(loop, reference, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(history["loss"], reference_history["loss"], rtol=1e-5)


class _EveryBatch(Callback):
    def on_train_batch_end(self, batch, logs=None):
        pass


def test_steps_that_need_python_between_them_say_why(monkeypatch, rng):
    x, y = rng.normal(size=(40, 9)).astype("float32"), rng.integers(0, 4, size=40)
    make_net, loss, _ = CASES["relu_sparse_ce"]
    *_, step_loop = _fit(monkeypatch, True, make_net, loss, x, y, callbacks=[_EveryBatch()])
    assert step_loop == "step_loop: Python (a callback listens to every batch)"


@pytest.mark.parametrize("features,units", [(9, 12), (400, 400)])  # the wide one's gradients are scanned in parallel
def test_a_non_finite_step_in_the_loop_stops_training_as_in_python(monkeypatch, rng, features, units):
    x, y = rng.normal(size=(40, features)).astype("float32"), rng.integers(0, 4, size=40)
    x[23] = 3e38 * (-1.0) ** np.arange(features)  # in the second batch of 16: the products overflow, inf - inf
    kept, explained = [], []
    for flag in ("1", "0"):
        monkeypatch.setenv("HPCTRAIN_NATIVE", flag)
        torch.manual_seed(3)
        net = _mlp(torch.nn.ReLU(), features=features, hidden=units)()
        trainer = hpctrain.Trainer(net, loss=CrossEntropy(sparse=True, from_logits=True), optimizer="adam")
        with pytest.raises(NonFiniteLossError, match="at epoch 1, step 2 of 3 done in that epoch"):
            trainer.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
        kept.append([p.detach().clone() for p in net.parameters()])
        explained.append(_step_loop_line(trainer))
    assert explained[0].startswith("step_loop: C++")
    assert all(torch.isfinite(w).all() for w in kept[0])  # the bad step's and later updates were skipped
    for a, b in zip(*kept, strict=True):
        assert torch.equal(a, b)
