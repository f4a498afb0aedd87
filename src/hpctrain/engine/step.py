"""Step executors: one training step (forward, loss, backward, update) on one batch."""

from __future__ import annotations

import torch

from hpctrain.engine.metrics import MetricSet, ModelOutput


class AutogradStep:
    """The general executor: any ``nn.Module``, gradients by autograd, one optimizer call."""

    name = "autograd"

    def __init__(self, module, loss, optimizer, *, penalty=None, output_activation=None):
        self.module = module
        self.loss = loss
        self.optimizer = optimizer
        self.penalty = penalty
        self.output_activation = output_activation

    def __call__(self, x: torch.Tensor, y: torch.Tensor, metrics: MetricSet) -> None:
        logits = self.module(x)
        loss = self.loss(logits, y)
        if self.penalty is not None:
            loss = loss + self.penalty()
        loss.backward()
        self.optimizer.step()
        # set_to_none: the next backward writes fresh gradients instead of adding into zeroed ones.
        self.optimizer.zero_grad(set_to_none=True)
        metrics.update(loss, ModelOutput(logits.detach(), self.output_activation), y)
