"""Step executors: one training step (forward, loss, backward, update) on one batch."""

from __future__ import annotations

import contextlib

import torch

from hpctrain.engine.data import split_weights
from hpctrain.engine.metrics import MetricSet, ModelOutput


class AutogradStep:
    """The general executor: any ``nn.Module``, gradients by autograd, one optimizer call.

    With replicas, each one's loss is weighted by its share of the global batch and the
    gradients are summed (by ``DistributedDataParallel``, during backward), which makes the
    update that of the mean loss over the global batch.
    """

    name = "autograd"

    def __init__(self, module, loss, optimizer, *, penalty=None, output_activation=None, communicator=None,
                 precision="float32", forward=None):
        self.module = module
        # ``forward``: the module itself, or its torch.compile'd wrapper (same parameters).
        self.forward = module if forward is None else forward
        self.precision = precision
        self.loss = loss
        self.optimizer = optimizer
        self.penalty = penalty
        self.output_activation = output_activation
        self.communicator = communicator
        # Replicas over torch.distributed: DistributedDataParallel sums the gradients during backward
        # (a torch.compile'd forward keeps the one all-reduce after backward, sum_gradients).
        self.summed_in_backward = forward is None and hasattr(communicator, "data_parallel")
        if self.summed_in_backward:
            self.forward = communicator.data_parallel(module, optimizer)  # sharding re-points the optimizer
        self.guard = None
        self.update = optimizer.step
        self._checked_loss = None

    def guard_with(self, guard, optimizer) -> None:
        self.guard = guard
        self.update = guard.guarded_update(self.optimizer.step, self.optimizer)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, metrics: MetricSet, batch_rows: int | None = None) -> None:
        rows = x.shape[0]
        y, weights = split_weights(y)
        self._batch = (rows, batch_rows, weights)
        loss, logits = (self.user_step or self.standard_step)(x, y)
        # set_to_none: the next backward writes fresh gradients instead of adding into zeroed ones.
        self.optimizer.zero_grad(set_to_none=True)
        if rows:
            metrics.update(loss.detach(), ModelOutput(logits.detach(), self.output_activation), y, weights)

    user_step = None  # a front end's own ``fn(x, y) -> (loss, prediction)`` built from the phases below

    def standard_step(self, x, y):
        """Forward, loss, backward, update: what a user's own train_step changes or adds to."""
        logits = self.forward_pass(x)
        loss = self.compute_loss(logits, y)
        self.backward(loss)
        self.apply_update()
        return loss, logits

    # ---- the phases of one step ----------------------------------------------------------------

    def forward_pass(self, x):
        with autocast(x.device, self.precision):
            return self.forward(x)

    def compute_loss(self, logits, y):
        """The batch's loss (sample weights applied) plus the weight penalty."""
        rows, _, weights = self._batch
        with autocast(logits.device, self.precision):
            if not rows:
                loss = logits.sum() * 0.0  # an empty share adds nothing
            else:
                loss = self.loss(logits, y) if weights is None else self.loss.weighted(logits, y, weights)
        if self.penalty is not None:
            loss = loss + self.penalty()
        return loss

    def backward(self, loss) -> None:
        """Gradients of the loss; with replicas, summed so that the update is the global batch's."""
        rows, batch_rows, _ = self._batch
        # Weights n_r / b sum to one over the replicas, so the penalty, added by each, counts once.
        scaled = loss if self.communicator is None else loss * (rows / batch_rows)
        scaled.backward()
        if self.communicator is not None and not self.summed_in_backward:
            sum_gradients([p for p in self.module.parameters() if p.requires_grad], self.communicator)
        self._checked_loss = loss

    def apply_update(self) -> None:
        """The optimizer's update, skipped by the non-finite guard where the step went bad."""
        if self.guard is not None:  # replicas check the same summed gradients, so they agree
            grads = [p.grad for p in self.module.parameters() if p.grad is not None]
            loss = self._checked_loss
            self.guard.check(grads if self.communicator is not None or loss is None else [loss.detach().float(), *grads])
        self.update()


def sum_gradients(params: list[torch.Tensor], communicator) -> None:
    """Sums ``params``' gradients over the communicator's replicas, in one all-reduce after backward.

    Used where DistributedDataParallel is not: a torch.compile'd forward, a pipeline stage's replicas.
    """
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    # One flag per parameter rides along: a parameter no replica computed a gradient for
    # keeps None, so the optimizer skips it as it would in one process.
    local_flags = [p.grad is not None for p in params]
    had_gradient = torch.tensor([float(flag) for flag in local_flags], device=grads[0].device)
    flat = torch.cat([*(g.reshape(-1) for g in grads), had_gradient])
    communicator.all_reduce_sum_(flat)  # sync point: every replica waits here
    # Reading the summed flags is a host sync; it is needed only where this replica had a None.
    flags = local_flags if all(local_flags) else [bool(f) for f in flat[-len(params):].tolist()]
    offset = 0
    for param, flag in zip(params, flags):
        param.grad = flat[offset:offset + param.numel()].view_as(param) if flag else None
        offset += param.numel()


def autocast(device: torch.device, precision: str):
    """Matrix multiplies in bfloat16 where the plan says so; losses and reductions stay float32."""
    if precision != "bfloat16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
