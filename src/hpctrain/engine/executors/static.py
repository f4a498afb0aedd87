"""The static step (:mod:`hpctrain.engine.static_step`) called from Python once per batch."""

from __future__ import annotations

from hpctrain.engine.executors.base import EpochSpan, Executor, run_each_step


class StaticExecutor(Executor):
    """Resident batches come with the column of ones the step's first layer folds its bias into."""

    name = "static"

    def run(self, span: EpochSpan, progress) -> None:
        ones_column = getattr(self.step, "input_ones_column", False)
        run_each_step(self.step, span.each_batch(ones_column=ones_column), span.done, self.metrics, self.context,
                      progress)
