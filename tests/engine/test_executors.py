"""Every executor, driven through the executor protocol alone (``prepare``, ``run``, ``results``,
``end_epoch``, ``state_dict``), trains a small model to the weights and loss of a plain PyTorch loop
(autograd, ``torch.optim.Adam``) to 1e-5."""

import numpy as np
import pytest
import torch

from hpctrain.engine.callbacks import CallbackList
from hpctrain.engine.cuda_graph import GraphedSteps
from hpctrain.engine.data import ResidentData
from hpctrain.engine.executors import (AutogradExecutor, CudaGraphExecutor, EpochSpan, NativeLoopExecutor,
                                       StaticExecutor, StepContext)
from hpctrain.engine.guard import NonFiniteGuard
from hpctrain.engine.losses import CrossEntropy
from hpctrain.engine.metrics import DeferredMetricSet, MetricSet
from hpctrain.engine.progress import Progress
from hpctrain.engine.static_step import StaticStep
from hpctrain.engine.step import AutogradStep

ROWS, FEATURES, CLASSES, BATCH, LR = 100, 9, 4, 16, 0.01  # six batches of 16 and a last one of 4
STEPS = -(-ROWS // BATCH)


def _model(device) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 12), torch.nn.ReLU(), torch.nn.Linear(12, CLASSES)).to(device)


def _data(device):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(ROWS, FEATURES, generator=generator)
    y = torch.randint(0, CLASSES, (ROWS,), generator=generator)
    order = torch.randperm(ROWS, generator=generator)
    return x.to(device), y.to(device), order.to(device)


def _reference(device, epochs: int):
    """Plain PyTorch: autograd, the loss's mean per batch, Adam; the last epoch's mean loss."""
    module, (x, y, order) = _model(device), _data(device)
    optimizer = torch.optim.Adam(module.parameters(), lr=LR)
    for _ in range(epochs):
        total = 0.0
        for first in range(0, ROWS, BATCH):
            rows = order[first:first + BATCH]
            loss = torch.nn.functional.cross_entropy(module(x[rows]), y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(rows)
    return [p.detach().cpu() for p in module.parameters()], total / ROWS


class _Counts:
    """What runs around the steps, as the fit session would do it: here it only counts."""

    def __init__(self):
        self.done, self.choices = [], []

    def context(self) -> StepContext:
        return StepContext(hooks=CallbackList([], model=None, params={}), before_update=None, retuner=None,
                           after_step=self.done.append, after_steps=lambda done, count: self.done.append(done),
                           should_stop=lambda: False,
                           note_choice=lambda key, value, reason: self.choices.append((key, value, reason)))


def _autograd(module, optimizer, device):
    loss = CrossEntropy(sparse=True, from_logits=True)
    return AutogradExecutor(AutogradStep(module, loss, optimizer), MetricSet([], device))


def _static_step(module, optimizer, device, executor_class, **arguments):
    loss = CrossEntropy(sparse=True, from_logits=True)
    step = StaticStep(module, loss, optimizer, batch_size=BATCH)
    step.guard_with(NonFiniteGuard(device), optimizer)  # the C++ loop checks each step as the fit's guard does
    metrics = DeferredMetricSet([], device, loss=loss, output_activation=None, rows=ROWS, width=(CLASSES,))
    return executor_class(step, metrics, **arguments)


def _static(module, optimizer, device):
    return _static_step(module, optimizer, device, StaticExecutor)


def _native_loop(module, optimizer, device):
    return _static_step(module, optimizer, device, NativeLoopExecutor)


def _cuda_graph(module, optimizer, device):
    x, y, _ = _data(device)
    executor = _static_step(module, optimizer, device, CudaGraphExecutor, graphed=None)
    executor.graphed = GraphedSteps(executor.step, ResidentData(x, y), BATCH, 4, module, optimizer)
    return executor


def _train(make_executor, device, epochs: int):
    module = _model(device)
    optimizer = torch.optim.Adam(module.parameters(), lr=LR, fused=True)
    executor = make_executor(module, optimizer, device)
    counts = _Counts()
    executor.prepare(counts.context())
    x, y, order = _data(device)
    for _ in range(epochs):
        module.train()
        executor.reset_metrics()
        executor.run(EpochSpan(done=0, data=ResidentData(x, y), order=order, batch_size=BATCH),
                     Progress(verbose=0, total_steps=STEPS))
        executor.end_epoch()
    return executor, counts, [p.detach().cpu() for p in module.parameters()], executor.results()["loss"]


def _assert_trains_as_torch(make_executor, device, name: str, *, epochs: int = 2):
    executor, counts, weights, loss = _train(make_executor, device, epochs)
    expected_weights, expected_loss = _reference(device, epochs)
    assert executor.name == name
    assert counts.done[-1] == STEPS and counts.choices == []
    for got, expected in zip(weights, expected_weights, strict=True):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    assert executor.state_dict() == {}  # the weights and optimizer state are the module's and optimizer's own
    executor.load_state_dict({})
    return counts


def test_autograd_executor_trains_as_torch():
    counts = _assert_trains_as_torch(_autograd, torch.device("cpu"), "autograd")
    assert counts.done == [*range(1, STEPS + 1)] * 2  # one Python call per step


def test_static_executor_trains_as_torch():
    counts = _assert_trains_as_torch(_static, torch.device("cpu"), "static")
    assert counts.done == [*range(1, STEPS + 1)] * 2


@pytest.mark.native_loop
def test_native_loop_executor_trains_as_torch():
    counts = _assert_trains_as_torch(_native_loop, torch.device("cpu"), "native loop")
    assert counts.done == [STEPS] * 2  # each epoch's gathered batches in one call


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA graph executor needs a CUDA device")
def test_cuda_graph_executor_trains_as_torch():
    counts = _assert_trains_as_torch(_cuda_graph, torch.device("cuda"), "cuda graph")
    assert counts.done == [4, 5, 6, 7] * 2  # one launch of four steps, then three eager steps


def test_a_state_the_executor_does_not_keep_is_refused():
    executor = _autograd(_model("cpu"), torch.optim.SGD(_model("cpu").parameters(), lr=LR), torch.device("cpu"))
    with pytest.raises(ValueError, match=r"the autograd executor keeps no state of its own; got \['order'\]\."):
        executor.load_state_dict({"order": 1})
