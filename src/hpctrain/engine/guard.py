"""The non-finite guard: a NaN/Inf loss or gradient stops training at the step it appeared, with
the weights from before that step, and without a host sync per step.

Each step runs one fused check (the kernel ``GradScaler`` uses) that sets a device-side flag when
any checked value is not finite. The flag is sticky: from the bad step on, every update is skipped
(the fused Adam/AdamW/SGD kernels take the flag as ``found_inf``), so the weights stay those of the
last good step until the loop next reads the flag, at the epoch's end or before a checkpoint, and
raises :class:`~hpctrain.errors.NonFiniteLossError`. Optimizers without a fused kernel read the
flag before each update instead (a host sync per step, paid only by them).

In stop mode the direct fused Adam update counts the skipped steps too, and the optimizer's step
counter is put back when the flag is read (a callback reading ``optimizer.iterations`` inside an
epoch after a bad step sees the skipped steps counted).

With ``on_nonfinite="skip_step"`` the flag is lowered before each step's check instead, so only the
bad steps are skipped; :class:`SkippingStep` leaves their batches out of the epoch's loss and metrics.
When training stops, :func:`first_nonfinite_output` recomputes the bad step's batch to name what went
non-finite first (paid once, after the stop).
"""

from __future__ import annotations

import torch

from hpctrain.engine.data import split_weights
from hpctrain.engine.metrics import OutputMetric, StatefulMetric
from hpctrain.engine.optim import as_torch_optimizer, is_direct_fused_update
from hpctrain.engine.statistics import KeptStatistics
from hpctrain.engine.step import autocast
from hpctrain.errors import ConfigError, valid_names_hint

ON_NONFINITE = ("raise", "skip_step")


def check_on_nonfinite(value) -> str:
    if value not in ON_NONFINITE:
        raise ConfigError(f"on_nonfinite must be 'raise' (stop training) or 'skip_step' (skip the update); got "
                          f"{value!r}; {valid_names_hint(ON_NONFINITE)}.")
    return value


class NonFiniteGuard:
    def __init__(self, device: torch.device, *, skip_steps: bool = False, statistics=()):
        self.skip_steps = skip_steps
        # What the forward updates (batch norm's statistics): put back after a bad step, as the weights are.
        self.statistics = KeptStatistics(list(statistics))
        self.found_inf = torch.zeros((), device=device)
        # Stop mode: steps since the first bad one, inclusive. Skip mode: the steps skipped.
        self.bad_steps = torch.zeros((), device=device)
        self.one = torch.ones((), device=device)
        self._counters = []  # optimizer step counters that counted skipped updates (stop mode)
        self._counters_settled = False
        self._host_counted = None  # an optimizer whose ``scheduled_updates`` counts every step on the host
        self._host_uncounted = 0  # skipped steps of this epoch taken off that count so far

    def reset(self) -> None:
        self.found_inf.zero_()
        self.bad_steps.zero_()
        self._counters_settled = False
        self._host_uncounted = 0
        self.statistics.take()  # restored from a checkpoint or changed between fits: these are good

    def check(self, tensors) -> None:
        """Raise the flag if any value is NaN/Inf (multiplies by one in place: values unchanged)."""
        self.checker(tensors)()

    def checker(self, tensors):
        """:meth:`check` of these tensors as a no-argument call, its operands bound once."""
        # A list is kept as given: a step may put fresh tensors into it before each check.
        tensors = tensors if isinstance(tensors, list) else list(tensors)
        found_inf, one, bad_steps = self.found_inf, self.one, self.bad_steps
        check_and_unscale = torch._amp_foreach_non_finite_check_and_unscale_
        statistics = self.statistics if self.statistics else None

        def check_sticky() -> None:
            check_and_unscale(tensors, found_inf, one)
            bad_steps.add_(found_inf)
            if statistics is not None:
                statistics.settle(found_inf)

        def check_alone() -> None:
            found_inf.zero_()  # each step judged alone: the bad one is skipped, the next ones run
            check_sticky()

        return check_alone if self.skip_steps else check_sticky

    def guarded_update(self, update, optimizer):
        """``update`` made to skip itself while the flag is up."""
        if is_direct_fused_update(update):
            update.found_inf = self.found_inf
            if not self.skip_steps:
                # The flag is sticky, so the updates skipped are exactly ``bad_steps``: the step
                # counter is put back once when the flag is read, not by a kernel call per step.
                update.uncount_skipped_each_step = False
                self._counters += update.counters
            return update
        torch_optimizer = as_torch_optimizer(optimizer)  # not direct: update is this optimizer's step
        if all(group.get("fused") for group in torch_optimizer.param_groups):
            torch_optimizer.found_inf = self.found_inf  # read by torch's fused kernels, as GradScaler sets it
            return update
        return lambda: None if bool(self.found_inf) else update()  # host sync: no fused kernel to skip in

    def count_updates_on_host(self, optimizer) -> None:
        """``optimizer.scheduled_updates`` counts every step on the host (a schedule's clock, SGD's
        update count); the skipped ones are taken off it whenever the flag is read. ``None``: no such count."""
        self._host_counted = optimizer

    def first_bad_step(self, steps_done: int) -> int | None:
        """The 1-based step of this epoch whose values were not finite; ``None`` if all were (a host sync)."""
        bad = int(self.bad_steps.item())
        if bad and not self._counters_settled:
            for counter in self._counters:
                counter.sub_(bad)
            self._counters_settled = True
        self._uncount_on_host(bad)
        return None if bad == 0 else steps_done - bad + 1

    def skipped_steps(self) -> int:
        """Steps skipped since the last reset (a host sync)."""
        skipped = int(self.bad_steps.item())
        self._uncount_on_host(skipped)
        return skipped

    def _uncount_on_host(self, skipped: int) -> None:
        if self._host_counted is not None and skipped > self._host_uncounted:
            self._host_counted.scheduled_updates -= skipped - self._host_uncounted
            self._host_uncounted = skipped


class SkippingStep:
    """A step whose batch leaves no trace in the epoch's loss and metrics when the guard skips it.

    The accumulators are copied before the step and put back where the flag is up: a few scalar
    copies per step and no host sync. Deferred metrics are folded in after every step, so each
    batch can be taken back on its own (this costs skip mode the batching of metric updates).
    """

    def __init__(self, step, guard: NonFiniteGuard):
        self.step = step
        self.guard = guard

    def __getattr__(self, name):
        return getattr(self.step, name)

    def __call__(self, x, y, metrics, *global_rows) -> None:
        accumulators = _accumulators(metrics)
        before = [tensor.clone() for tensor in accumulators]
        self.step(x, y, metrics, *global_rows)
        if hasattr(metrics, "flush"):
            metrics.flush()
        skipped = self.guard.found_inf > 0
        for tensor, saved in zip(accumulators, before):
            tensor.copy_(torch.where(skipped, saved, tensor))


def _accumulators(metrics) -> list[torch.Tensor]:
    tensors = []
    for tracker in [metrics.loss, *metrics.metrics]:
        while isinstance(tracker, OutputMetric):
            tracker = tracker.metric
        if isinstance(tracker, StatefulMetric):
            tensors += [variable.value for variable in tracker.metric.variables]
        else:
            tensors += [tracker.total, tracker.count]
    return tensors


def first_nonfinite_output(module: torch.nn.Module, loss, x: torch.Tensor, y: torch.Tensor, *, penalty=None,
                           precision: str = "float32") -> str | None:
    """What went NaN/Inf first when ``module`` trains on this batch, ``None`` if nothing did.

    In the order the step computes them: the layers' outputs (forward), the loss, then the
    gradients, named nearest the output first as backward computes them. Gradients come from
    ``torch.autograd.grad``, so ``.grad`` and the optimizer are untouched; the RNG and the
    module's buffers and its parameters that take no gradient (a front end's moving statistics) are
    restored afterwards.
    """
    y, weights = split_weights(y)
    names = {layer: name for name, layer in module.named_modules()}
    first_bad_layer = []

    def note_output(layer, inputs, output):
        if not first_bad_layer and isinstance(output, torch.Tensor) and output.is_floating_point() and not bool(
                torch.isfinite(output).all()):
            first_bad_layer.append(layer)

    leaves = [layer for layer in module.modules() if next(layer.children(), None) is None]
    hooks = [layer.register_forward_hook(note_output) for layer in leaves]
    frozen = [param for param in module.parameters() if not param.requires_grad]
    buffers = [(buffer, buffer.detach().clone()) for buffer in [*module.buffers(), *frozen]]
    try:
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), autocast(
                x.device, precision):
            logits = module(x)
            value = loss(logits, y) if weights is None else loss.weighted(logits, y, weights)
            if penalty is not None:
                value = value + penalty()
    finally:
        for hook in hooks:
            hook.remove()
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
    if first_bad_layer:
        return f"the output of layer {_layer_name(first_bad_layer[0], names)}"
    if not bool(torch.isfinite(value).all()):
        return f"the loss ({value.item()})"
    named = [(name, param) for name, param in module.named_parameters() if param.requires_grad]
    grads = torch.autograd.grad(value, [param for _, param in named], allow_unused=True)
    for (name, _), grad in reversed(list(zip(named, grads))):
        if grad is not None and not bool(torch.isfinite(grad).all()):
            return f"the gradient of {name!r}"
    return None


def _layer_name(layer: torch.nn.Module, names: dict) -> str:
    name = getattr(layer, "name", None)
    name = name if isinstance(name, str) else names.get(layer, "")
    return f"{name!r} ({type(layer).__name__})" if name else type(layer).__name__
