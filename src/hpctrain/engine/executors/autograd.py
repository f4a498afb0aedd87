"""The general executor: any module, one Python call of an :class:`~hpctrain.engine.step.AutogradStep`
per batch (or of the trainer's own ``train_step``, built from that step's phases)."""

from __future__ import annotations

from hpctrain.engine import native
from hpctrain.engine.executors.base import Executor


class AutogradExecutor(Executor):
    name = "autograd"

    def finish_fit(self) -> None:
        # A forward that looked for the native kernels (engine.native.kernels) and found them not
        # built starts their build now, not while training (a compiler would slow the fit).
        native.build_if_asked()
