"""Groups of static steps replayed as CUDA graphs (:mod:`hpctrain.engine.cuda_graph`); the steps
left over at an epoch's end, and every step after a capture that fails, run eagerly."""

from __future__ import annotations

import torch

from hpctrain.engine.executors.base import EpochSpan
from hpctrain.engine.executors.static import StaticExecutor


class CudaGraphExecutor(StaticExecutor):
    name = "cuda graph"

    def __init__(self, step, metrics, graphed):
        super().__init__(step, metrics)
        self.graphed = graphed  # a GraphedSteps; None once a capture failed

    def run(self, span: EpochSpan, progress) -> None:
        if self.graphed is not None and span.resident:
            span = self._run_graphed(span, progress)
            if self.context.should_stop():
                return
        super().run(span, progress)

    def _run_graphed(self, span: EpochSpan, progress) -> EpochSpan:
        """Whole groups of steps through the graph; returns the span of the rows left."""
        graphed, context = self.graphed, self.context
        order = span.order if span.order is not None else torch.arange(len(span.data), device=span.data.x.device)
        done, start = 0, 0
        while start + graphed.rows <= len(order):
            try:
                graphed.run(order[start:start + graphed.rows], self.metrics)
            except RuntimeError as exc:  # a kernel that cannot be captured: carry on eagerly
                self.graphed = None
                context.note_choice("cuda_graph", False, f"capture failed: {exc}".splitlines()[0])
                break
            start += graphed.rows
            done += graphed.steps_per_launch
            context.after_steps(span.done + done, graphed.steps_per_launch)  # the guard names steps from this
            progress.step(span.done + done, self.metrics.local_results)
            if context.should_stop():
                break
        return span.after(done, order[start:])
