"""The static step (:mod:`hpctrain.engine.static_step`) called from Python once per batch."""

from __future__ import annotations

from hpctrain.engine import native
from hpctrain.engine.executors.base import EpochSpan, Executor, run_each_step


class StaticExecutor(Executor):
    """Resident batches come with the column of ones the step's first layer folds its bias into.
    ``build_step_loop_after_fit``: the C++ loop would have run these steps but is not built yet;
    its build starts when the fit ends (started while training, even an idle-priority compiler
    slowed a two-thread fit severalfold)."""

    name = "static"

    def __init__(self, step, metrics, *, build_step_loop_after_fit: bool = False):
        super().__init__(step, metrics)
        self.build_step_loop_after_fit = build_step_loop_after_fit

    def finish_fit(self) -> None:
        if self.build_step_loop_after_fit:
            native.build_in_background()

    def run(self, span: EpochSpan, progress) -> None:
        ones_column = getattr(self.step, "input_ones_column", False)
        run_each_step(self.step, span.each_batch(ones_column=ones_column), span.done, self.metrics, self.context,
                      progress)
