"""The static step's C++ loop (:mod:`hpctrain.engine.native`): each run of gathered batches is one
call from Python, with nothing per step in Python (no per-batch callbacks, schedule or
checkpoints: :func:`~hpctrain.engine.executors.choice.why_each_step_needs_python`)."""

from __future__ import annotations

from hpctrain.engine import native
from hpctrain.engine.executors.base import EpochSpan
from hpctrain.engine.executors.static import StaticExecutor


class NativeLoopExecutor(StaticExecutor):
    """Batches that come ready (a running pass with ``steps_per_epoch``) take the Python loop."""

    name = "native loop"

    def run(self, span: EpochSpan, progress) -> None:
        loop = native.step_loop()
        if loop is None or not span.resident:
            super().run(span, progress)
            return
        ones_column = getattr(self.step, "input_ones_column", False)
        runs = span.data.batch_runs(span.batch_size, order=span.order, ones_column=ones_column)
        self._run_runs(loop, runs, span.done, progress)

    def _run_runs(self, loop, runs, done: int, progress) -> None:
        context, metrics = self.context, self.metrics
        retuner = context.retuner
        for xs, ys, sizes in runs:
            self.step.run_many(loop, xs, ys, sizes, metrics)
            done += len(sizes)
            if retuner is not None:
                retuner.after_step(len(sizes))
            progress.step(done, metrics.local_results)
            context.after_steps(done, len(sizes))
            if context.should_stop():
                break
