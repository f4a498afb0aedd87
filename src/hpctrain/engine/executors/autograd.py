"""The general executor: any module, one Python call of an :class:`~hpctrain.engine.step.AutogradStep`
per batch (or of the trainer's own ``train_step``, built from that step's phases)."""

from __future__ import annotations

from hpctrain.engine.executors.base import Executor


class AutogradExecutor(Executor):
    name = "autograd"
