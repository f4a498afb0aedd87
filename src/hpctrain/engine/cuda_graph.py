"""Several static steps captured as one CUDA graph and replayed: one launch per group of steps.

On a GPU a small step is bound by the CPU: ~15-20 kernel launches of ~5 us each. The static
executor's step is a fixed sequence of kernels on buffers allocated once, which is what a CUDA
graph needs, so ``steps_per_launch`` whole steps — the batch gather from the resident data
included — are captured once and replayed with one call per group. The last steps of an epoch
that do not fill a group run eagerly, on the same kernels.

Opt-in (``make_plan(cuda_graph=True)``) until its equivalence tests (tests/engine/test_cuda_graph.py) have
run on a GPU; a capture that fails falls back to eager steps and says why in ``plan.explain()``.
"""

from __future__ import annotations

import torch

from hpctrain.engine.tuning import TrainingState

STEPS_PER_LAUNCH = 32
WARMUP_GROUPS = 2


class _CaptureSlots:
    """Stands in for the metric set while capturing: each step writes its logits to a fixed slice."""

    def __init__(self, logits: torch.Tensor, batch_size: int, penalty: torch.Tensor):
        self.logits = logits
        self.batch_size = batch_size
        self.penalty = penalty
        self.next_row = 0

    def slot(self, rows: int, target: torch.Tensor) -> torch.Tensor:
        view = self.logits[self.next_row:self.next_row + rows]
        self.next_row += rows
        return view

    def add_penalty(self, value: torch.Tensor, batch_size: int) -> None:
        self.penalty.add_(value.detach(), alpha=batch_size)


class GraphedSteps:
    """``steps_per_launch`` full batches of a :class:`StaticStep`, as one replayable CUDA graph."""

    def __init__(self, step, data, batch_size: int, steps_per_launch: int, module, optimizer):
        self.step = step
        self.data = data
        self.batch_size = batch_size
        self.steps_per_launch = steps_per_launch
        self.module = module
        self.optimizer = optimizer
        rows = steps_per_launch * batch_size
        device = data.x.device
        self.index = torch.zeros(rows, dtype=torch.int64, device=device)
        self.targets = torch.empty((rows, *data.y.shape[1:]), dtype=data.y.dtype, device=device)
        self.logits = torch.empty((rows, step.output_width), device=device)
        self.penalty = torch.zeros((), device=device)
        self.graph = None
        self.captured_lr = None

    @property
    def rows(self) -> int:
        return self.index.shape[0]

    def _steps(self) -> None:
        inputs = self.data.x.index_select(0, self.index)
        torch.index_select(self.data.y, 0, self.index, out=self.targets)
        slots = _CaptureSlots(self.logits, self.batch_size, self.penalty)
        for first in range(0, self.rows, self.batch_size):
            last = first + self.batch_size
            self.step(inputs[first:last], self.targets[first:last], slots)

    def _capture(self) -> None:
        # Warm-up runs change weights and optimizer state; they are restored before capture.
        state = TrainingState(self.module, self.optimizer)
        try:
            side = torch.cuda.Stream(device=self.data.x.device)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_GROUPS):
                    self._steps()
            torch.cuda.current_stream().wait_stream(side)
        finally:
            state.restore()
            self.penalty.zero_()  # the warm-up's penalties are not training's
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._steps()  # recorded, not run
        self.graph = graph
        self.captured_lr = self.optimizer.param_groups[0]["lr"]

    def run(self, index: torch.Tensor, metrics) -> None:
        """Train on the rows ``index`` (``rows`` of them, in batch order); record loss and metrics."""
        with torch.cuda.device(self.data.x.device):  # streams and graphs belong to the training device
            # The learning rate is baked into the captured optimizer kernel: a change means a recapture.
            if self.graph is None or self.optimizer.param_groups[0]["lr"] != self.captured_lr:
                self._capture()
            self.index.copy_(index)
            self.graph.replay()
        metrics.record(self.logits, self.targets)
        metrics.add_penalty(self.penalty, 1)
        self.penalty.zero_()


def graph_steps_per_launch(device: torch.device, full_steps: int) -> int:
    """How many steps one launch should hold here; 0 means no graph."""
    if device.type != "cuda" or full_steps < 4:
        return 0
    return min(STEPS_PER_LAUNCH, full_steps)
