"""How many local data-parallel processes a strategy runs for one model: measured at ``fit``.

The step timed is the model's forward and backward, plus an Adam update of a copy of the weights
(every replica applies the whole update, so it is not split). A model the engine runs as static
layers (Dense stacks) is timed as those layers' matrix products, not through the front end's own
call, whose per-call overhead the engine does not pay. The model's
weights, gradients and random state are left as they were. See :mod:`hpctrain.hardware.dp_decision`
for the numbers and the rule.
"""

from __future__ import annotations

import contextlib

import torch

from hpctrain.engine.static_step import Activation, Dropout, Linear, static_layers_of
from hpctrain.hardware import dp_decision
from hpctrain.hardware.dp_decision import ReplicaDecision, decide_replicas
from hpctrain.hardware.machine import inspect_machine


def measured_decision(module: torch.nn.Module, x, batch_size, *, devices: list[torch.device], explicit: bool,
                      threads: int) -> ReplicaDecision:
    """The decision for ``len(devices)`` replicas of ``module`` training on ``x`` at ``batch_size``,
    from the cache where this model, batch and machine were measured before."""
    requested = len(devices)

    def unmeasured(because: str) -> ReplicaDecision:
        return decide_replicas(requested, explicit=explicit, timings=None, unmeasured_because=because)

    if any(device.type != "cpu" for device in devices):
        return unmeasured("each replica has a GPU of its own; the measurement covers CPU processes sharing cores")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < requested:
        return unmeasured(f"batch_size={batch_size!r} gives no fixed share per replica")
    rows = _first_rows(x, batch_size)
    if rows is None:
        return unmeasured("the inputs are not one array or tensor")
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return unmeasured("the model has no trainable weights yet")
    numel = sum(p.numel() for p in params)
    label = (f"{type(getattr(module, 'keras_model', module)).__name__} ({numel:,} weights), inputs {tuple(rows.shape[1:])} {rows.dtype}, "
             f"batch {batch_size}, {requested} processes")
    key = dp_decision.cache_key({"model": _signature(module), "inputs": [list(rows.shape[1:]), str(rows.dtype)],
                                 "batch_size": batch_size, "replicas": requested, "threads": threads,
                                 "machine": _machine_signature()})
    timings = dp_decision.cached_timings(key)
    if timings is not None:
        return decide_replicas(requested, explicit=explicit, timings=timings, cached=True)
    try:
        with _state_kept(module):
            timings = dp_decision.measure_replica_timings(lambda count: _training_step(module, params, rows[:count]),
                                                          batch_size=batch_size, replicas=requested,
                                                          threads=threads, gradient_numel=numel)
    except (RuntimeError, TypeError, ValueError) as error:  # a model that cannot run a step on its own
        return unmeasured(f"the model's step could not be timed on its own ({type(error).__name__}: {error})")
    dp_decision.store_timings(key, timings, label)
    return decide_replicas(requested, explicit=explicit, timings=timings)


@contextlib.contextmanager
def _state_kept(module: torch.nn.Module):
    """Every tensor the timed steps may change, put back afterwards: a training-mode call advances a
    Keras model's dropout seed and BatchNormalization statistics (both held as parameters), and
    torch's global RNG, all of which the replicas' fit must start from untouched."""
    tensors = [*module.parameters(), *module.buffers()]
    saved = [tensor.detach().clone() for tensor in tensors]
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            with torch.no_grad():
                for tensor, value in zip(tensors, saved):
                    tensor.copy_(value)


def _first_rows(x, count: int) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x[:count].detach()
    if hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "__getitem__"):
        try:
            return torch.as_tensor(x[:count])
        except (TypeError, ValueError, RuntimeError):
            return None
    return None


def _training_step(module: torch.nn.Module, params: list[torch.nn.Parameter], rows: torch.Tensor):
    shadows = [p.detach().clone() for p in params]
    optimizer = torch.optim.Adam(shadows)
    forward = _static_forward(module) or module
    inputs = rows.float() if forward is not module else rows

    def step() -> None:
        with torch.enable_grad():
            grads = torch.autograd.grad(_scalar(forward(inputs)), params, allow_unused=True)
        for shadow, grad in zip(shadows, grads):
            shadow.grad = grad if grad is not None else torch.zeros_like(shadow)
        optimizer.step()

    return step


def _static_forward(module: torch.nn.Module):
    """The engine's static layers as plain torch calls, or None where the model has others."""
    layers = static_layers_of(module)
    if not layers or not all(isinstance(layer, (Linear, Activation, Dropout)) for layer in layers):
        return None
    activations = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}

    def forward(x: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            if isinstance(layer, Linear):
                x = x @ layer.kernel() if layer.bias is None else torch.addmm(layer.bias, x, layer.kernel())
            elif isinstance(layer, Activation):
                x = activations[layer.name](x)
        return x

    return forward


def _scalar(output) -> torch.Tensor:
    """One number depending on every output, for backward to start from."""
    if isinstance(output, torch.Tensor):
        return output.float().sum()
    parts = output.values() if isinstance(output, dict) else output
    return sum(_scalar(part) for part in parts)


def _signature(module: torch.nn.Module) -> list:
    return [(type(m).__qualname__, [tuple(p.shape) for p in m.parameters(recurse=False)]) for m in module.modules()]


def _machine_signature() -> list:
    machine = inspect_machine()
    return [machine.cpu.model, machine.cpu.physical_cores, machine.cpu.logical_cpus_usable, machine.pytorch.version]
