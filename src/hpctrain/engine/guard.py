"""The non-finite guard: a NaN/Inf loss or gradient stops training at the step it appeared, with
the weights from before that step, and without a host sync per step.

Each step runs one fused check (the kernel ``GradScaler`` uses) that sets a device-side flag when
any checked value is not finite. The flag is sticky: from the bad step on, every update is skipped
(the fused Adam/AdamW/SGD kernels take the flag as ``found_inf``), so the weights stay those of the
last good step until the loop next reads the flag, at the epoch's end or before a checkpoint, and
raises :class:`~hpctrain.errors.NonFiniteLossError`. Optimizers without a fused kernel read the
flag before each update instead (a host sync per step, paid only by them).
"""

from __future__ import annotations

import torch

from hpctrain.engine.optim import as_torch_optimizer, is_direct_fused_update


class NonFiniteGuard:
    def __init__(self, device: torch.device):
        self.found_inf = torch.zeros((), device=device)
        self.bad_steps = torch.zeros((), device=device)  # steps since the first bad one, inclusive
        self._one = torch.ones((), device=device)

    def reset(self) -> None:
        self.found_inf.zero_()
        self.bad_steps.zero_()

    def check(self, tensors) -> None:
        """Raise the flag if any value is NaN/Inf (multiplies by one in place: values unchanged)."""
        torch._amp_foreach_non_finite_check_and_unscale_(list(tensors), self.found_inf, self._one)
        self.bad_steps.add_(self.found_inf)

    def guarded_update(self, update, optimizer):
        """``update`` made to skip itself while the flag is up."""
        if is_direct_fused_update(update):
            update.found_inf = self.found_inf
            return update
        torch_optimizer = as_torch_optimizer(optimizer)  # not direct: update is this optimizer's step
        if all(group.get("fused") for group in torch_optimizer.param_groups):
            torch_optimizer.found_inf = self.found_inf  # read by torch's fused kernels, as GradScaler sets it
            return update
        return lambda: None if bool(self.found_inf) else update()  # host sync: no fused kernel to skip in

    def first_bad_step(self, steps_done: int) -> int | None:
        """The 1-based step of this epoch whose values were not finite; ``None`` if all were (a host sync)."""
        bad = int(self.bad_steps.item())
        return None if bad == 0 else steps_done - bad + 1
