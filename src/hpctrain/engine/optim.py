"""Building PyTorch optimizers with the fastest kernel the device has for them.

On this project's reference CPU, fused Adam (one kernel over all parameters) measured faster than
foreach, which falls back to per-tensor calls there; optimizers without a fused kernel get
foreach, which at least batches the launches.
"""

from __future__ import annotations

import inspect
import math

import torch

from hpctrain.engine.flat import flat_view, lay_end_to_end
from hpctrain.errors import ConfigError, valid_names_hint


def fastest_kernel_options(optimizer_class: type, device: torch.device) -> dict:
    accepted = inspect.signature(optimizer_class).parameters
    if "fused" in accepted and device.type in ("cpu", "cuda"):
        return {"fused": True}
    if "foreach" in accepted:
        return {"foreach": True}
    return {}


def build_optimizer(optimizer_class: type, params, device: torch.device, *, schedule=None,
                    **hyperparameters) -> "LazyOptimizer":
    return LazyOptimizer(optimizer_class, list(params), device, hyperparameters, schedule=schedule)


class LazyOptimizer:
    """A PyTorch optimizer, constructed only when something needs the object itself.

    Constructing any ``torch.optim.Optimizer`` imports ``torch._dynamo`` (~0.9 s and ~90 MB on
    the reference machine, more than a short script's whole training). The static executor
    updates Adam/AdamW parameters with PyTorch's fused kernel on state kept in PyTorch's own
    layout (``state[param]`` with ``step``, ``exp_avg``, ``exp_avg_sq``; one param group), so it
    never needs the object; ``torch()`` builds it on demand and hands it that very state.
    """

    def __init__(self, optimizer_class: type, params: list, device: torch.device, hyperparameters: dict,
                 schedule=None):
        self.optimizer_class = optimizer_class
        # ``schedule(update_count) -> rate``; the count of updates lives on the host (see scheduled_rate).
        self.schedule = schedule
        self.scheduled_updates = 0
        # Keras's Adam adds epsilon to sqrt(v), PyTorch's to sqrt(v) / sqrt(1 - beta2^t): the same
        # update with PyTorch's epsilon set to keras_epsilon / sqrt(1 - beta2^t) before each step.
        self.keras_epsilon: float | None = None
        self.params = params
        self.device = device
        self.group = {**_class_defaults(optimizer_class), **hyperparameters,
                      **fastest_kernel_options(optimizer_class, device)}
        self.state: dict = {}
        self._built: torch.optim.Optimizer | None = None

    @property
    def param_groups(self) -> list[dict]:
        return [self.group]

    def torch(self) -> torch.optim.Optimizer:
        if self._built is None:
            hyperparameters = {key: value for key, value in self.group.items() if key != "params"}
            built = self.optimizer_class(self.params, **hyperparameters)
            for param, state in self.state.items():
                # The same dicts and tensors, so updates stay shared; but each its own step counter,
                # as torch.optim increments every parameter's counter.
                if "step" in state:
                    state["step"] = state["step"].clone()
                built.state[param] = state
            self.group = built.param_groups[0]
            self.state = built.state
            self._built = built
        return self._built

    def step(self) -> None:
        self.torch().step()


def update_count(optimizer) -> int | None:
    """Updates applied so far, from the optimizer state's step counter (a host read); ``None`` for
    an optimizer that keeps no counter (plain SGD)."""
    for state in optimizer.state.values():
        if "step" in state:
            return int(state["step"])
    return None


def scheduled_rate(optimizer):
    """A no-argument callable to run before each update that sets the scheduled learning rate (and
    Keras's per-step Adam epsilon, see :class:`LazyOptimizer`), or ``None`` when nothing changes.

    The update count is read from the optimizer state once here (one host sync per ``fit``, which
    also picks up restored state) and then counted on the host, so the per-step cost is one
    Python call of the schedule and no device round trip.
    """
    schedule = getattr(optimizer, "schedule", None)
    keras_epsilon = getattr(optimizer, "keras_epsilon", None)
    if schedule is None and keras_epsilon is None:
        return _host_update_counter(optimizer)
    counted = update_count(optimizer)
    if counted is not None:
        optimizer.scheduled_updates = counted
    beta2 = optimizer.param_groups[0].get("betas", (0.0, 0.0))[1]

    def set_rate() -> None:
        updates = optimizer.scheduled_updates
        for group in optimizer.param_groups:
            if schedule is not None:
                group["lr"] = float(schedule(updates))
            if keras_epsilon is not None:
                group["eps"] = keras_epsilon / math.sqrt(1.0 - beta2 ** (updates + 1))
        optimizer.scheduled_updates += 1

    return set_rate


def _host_update_counter(optimizer):
    """For an optimizer whose state keeps no step count (SGD), a callable counting updates on the
    host, so that ``iterations`` reads the number of updates as Keras's does; else ``None``."""
    if not isinstance(optimizer, LazyOptimizer) or optimizer.optimizer_class is not torch.optim.SGD:
        return None

    def count() -> None:
        optimizer.scheduled_updates += 1

    return count


def _class_defaults(optimizer_class: type) -> dict:
    return {name: parameter.default for name, parameter in inspect.signature(optimizer_class).parameters.items()
            if parameter.default is not inspect.Parameter.empty and name != "params"}


def as_torch_optimizer(optimizer) -> torch.optim.Optimizer:
    return optimizer.torch() if isinstance(optimizer, LazyOptimizer) else optimizer


OPTIMIZER_CLASSES = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}


def optimizer_class_by_name(name: str) -> type:
    try:
        return OPTIMIZER_CLASSES[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown optimizer {name!r}; {valid_names_hint(OPTIMIZER_CLASSES)}.") from None


def fast_update(optimizer):
    """A no-argument callable applying one update with the optimizer's own state.

    ``Optimizer.step`` spends ~40 us of Python per call around a ~14 us fused Adam kernel on
    the reference CPU; for a plain fused Adam/AdamW the kernel is called directly on the same
    state tensors (so ``optimizer.state_dict()`` sees every update). Anything else goes
    through ``step()``.
    """
    if _is_plain_fused_adam(optimizer) and hasattr(torch, "_fused_adam_"):
        return _FusedAdamUpdate(optimizer)
    return as_torch_optimizer(optimizer).step


def _optimizer_class(optimizer) -> type:
    return optimizer.optimizer_class if isinstance(optimizer, LazyOptimizer) else type(optimizer)


def is_direct_fused_update(update) -> bool:
    """Whether ``update`` (from :func:`fast_update`) is the bare fused kernel call."""
    return isinstance(update, _FusedAdamUpdate)


def _is_plain_fused_adam(optimizer) -> bool:
    if _optimizer_class(optimizer) not in (torch.optim.Adam, torch.optim.AdamW) or len(optimizer.param_groups) != 1:
        return False
    group = optimizer.param_groups[0]
    return bool(group.get("fused")) and not group["amsgrad"] and not group["maximize"] and not group[
        "capturable"] and not group["differentiable"] and not isinstance(group["lr"], torch.Tensor)


def _share_step_counter(states) -> None:
    """Point every parameter's ``step`` at one tensor when they all hold the same count."""
    first = states[0]["step"]
    if all(s["step"].device == first.device and bool(s["step"] == first) for s in states):
        for state in states:
            state["step"] = first


class _FusedAdamUpdate:
    def __init__(self, optimizer):
        self.optimizer = optimizer
        group = optimizer.param_groups[0]
        self.params = [p for p in (optimizer.params if isinstance(optimizer, LazyOptimizer) else group["params"])
                       if p.grad is not None]
        self.decoupled = group.get("decoupled_weight_decay", _optimizer_class(optimizer) is torch.optim.AdamW)
        for param in self.params:
            state = optimizer.state.setdefault(param, {})
            if not state:  # the same lazily created state torch.optim.Adam would create
                state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        states = [optimizer.state[p] for p in self.params]
        _share_step_counter(states)
        self.grads = [p.grad for p in self.params]
        self.exp_avgs = [s["exp_avg"] for s in states]
        self.exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        self.steps = [s["step"] for s in states]
        # One shared counter is one 1.5 us add per step instead of a 7 us foreach over every tensor.
        self.counters = [self.steps[0]] if all(t is self.steps[0] for t in self.steps) else self.steps
        self.one = torch.ones((), device=self.steps[0].device)
        self.params = [p.detach() for p in self.params]  # updated in place without recording autograd
        self._run_once_over_flat_buffers(states)
        self.found_inf = None  # a device flag from the non-finite guard: 1 skips the update
        self.uncount_skipped_each_step = True  # False: the guard corrects the counter itself

    def _run_once_over_flat_buffers(self, states) -> None:
        """Where parameters and gradients each lie in one buffer, the moments are laid out the same
        way and the kernel gets one tensor per list: its per-tensor overhead is paid once."""
        params, grads = flat_view(self.params), flat_view(self.grads)
        if params is None or grads is None or len(self.counters) != 1:
            return
        for key in ("exp_avg", "exp_avg_sq"):
            for state, view in zip(states, lay_end_to_end([state[key] for state in states])):
                state[key] = view  # the optimizer's state dict sees the same values, now views
        self.params, self.grads, self.steps = [params], [grads], self.counters
        self.exp_avgs = [flat_view(state["exp_avg"] for state in states)]
        self.exp_avg_sqs = [flat_view(state["exp_avg_sq"] for state in states)]

    def split_into_segments(self, segments) -> bool:
        """One tensor per segment instead of one per flat buffer: ``segments`` are ``(start, shape)``
        pieces covering the flat buffers end to end, in order. ``grads`` is then a list a step may
        fill with gradient tensors of its own before each update. False where the buffers are not
        flat (nothing changes)."""
        if len(self.params) != 1 or len(self.counters) != 1 or self.params[0].dim() != 1:
            return False

        def pieces(flat):
            return [flat[start:start + math.prod(shape)].view(shape) for start, shape in segments]

        self.params, self.grads = pieces(self.params[0]), pieces(self.grads[0])
        self.exp_avgs, self.exp_avg_sqs = pieces(self.exp_avgs[0]), pieces(self.exp_avg_sqs[0])
        self.steps = self.counters * len(segments)  # one counter, read once per tensor
        return True

    def __call__(self) -> None:
        # Read each step: a callback may have changed the learning rate.
        group = self.optimizer.param_groups[0]
        beta1, beta2 = group["betas"]
        # A tensor operand: adding a Python number costs a scalar-tensor wrap, ~1.5 us per call.
        if len(self.counters) == 1:
            self.counters[0].add_(self.one)
        else:
            torch._foreach_add_(self.counters, self.one)
        kernel = torch._fused_adamw_ if self.decoupled else torch._fused_adam_
        kernel(self.params, self.grads, self.exp_avgs, self.exp_avg_sqs, [], self.steps, amsgrad=False,
               lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
               maximize=False, found_inf=self.found_inf)
        if self.found_inf is not None and self.uncount_skipped_each_step:  # a skipped update is no step
            if len(self.counters) == 1:
                self.counters[0].sub_(self.found_inf)
            else:
                torch._foreach_sub_(self.counters, self.found_inf)
