"""The protocol every way of running training steps follows, and the Python loop most of them share.

An executor is built once per ``fit`` (:mod:`hpctrain.engine.executors.choice`; a model split across
processes supplies its part's own, through :mod:`hpctrain.engine.model_parallel`) around a step (one
batch's forward, loss, backward and update: :class:`~hpctrain.engine.step.AutogradStep`,
:class:`~hpctrain.engine.static_step.StaticStep`) and the metric set that step writes into. The
fit session hands it, once, what runs around the steps (:class:`StepContext`), then each epoch
the steps that epoch has left (:class:`EpochSpan`); it trains them and reports the metrics.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What runs around the steps of a fit: callbacks, the schedule, the thread retuner, the
    step counter (and the checkpoints due after a step), the stop flag and the plan's notes."""

    hooks: object  # a CallbackList
    before_update: Callable[[], None] | None  # sets a scheduled learning rate before each update
    retuner: object  # a ThreadRetuner, or None
    after_step: Callable[[int], None]  # counts the ``done``-th step of the epoch
    after_steps: Callable[[int, int], None]  # ``(done, count)``: ``count`` steps ran in one call
    should_stop: Callable[[], bool]
    note_choice: Callable[[str, object, str], None]  # a choice changed while training, for ``plan.explain()``


@dataclasses.dataclass
class EpochSpan:
    """The steps an epoch has left: ``done`` of them are done, the rest come either as ready
    ``batches`` (a DataLoader's, a replica's share, a running pass with ``steps_per_epoch``) or as
    the rows of resident ``data`` in ``order``, ``batch_size`` at a time (``order`` ``None``: as stored)."""

    done: int
    batches: object = None
    data: object = None
    order: torch.Tensor | None = None
    batch_size: int = 0

    @property
    def resident(self) -> bool:
        """Whether the steps are rows of resident data, which an executor may take many at a time."""
        return self.batches is None

    def each_batch(self, *, ones_column: bool = False):
        """The batches one by one; ``ones_column`` appends a column of ones to resident inputs."""
        if self.batches is not None:
            return self.batches
        return self.data.batches(self.batch_size, order=self.order, ones_column=ones_column)

    def after(self, steps: int, order: torch.Tensor) -> "EpochSpan":
        """The rest of this span once ``steps`` more are done, its rows ``order``."""
        return EpochSpan(done=self.done + steps, data=self.data, order=order, batch_size=self.batch_size)


class Executor:
    """Runs training steps; one class per way of running them, chosen once per ``fit``.

    ``prepare(context)``: what runs around the steps, once per fit. ``run(span, progress)``: the
    span's steps, with the progress bar told after each. ``reset_metrics()``/``results()``: the
    epoch's loss and metrics. ``end_epoch()``: after an epoch's steps; ``finish_fit()``: after the last. ``state_dict()`` /
    ``load_state_dict()``: what it holds beyond the module's and optimizer's tensors, which it
    trains in place (so a checkpoint of those resumes it).
    """

    name = "executor"

    def __init__(self, step, metrics):
        self.step = step
        self.metrics = metrics
        self.context: StepContext | None = None

    def prepare(self, context: StepContext) -> None:
        self.context = context

    def run(self, span: EpochSpan, progress) -> None:
        run_each_step(self.step, span.each_batch(), span.done, self.metrics, self.context, progress)

    def reset_metrics(self) -> None:
        self.metrics.reset()

    def results(self) -> dict[str, float]:
        return self.metrics.results()

    def end_epoch(self) -> None:
        """The epoch's last gradients on ``.grad``, for callbacks and users, where the step keeps its own."""
        sync_gradients = getattr(self.step, "sync_gradients", None)
        if sync_gradients is not None:
            sync_gradients()

    def finish_fit(self) -> None:
        """After the fit's last epoch."""

    def state_dict(self) -> dict:
        """Nothing beyond the module's and optimizer's tensors, which every executor here trains in
        place; an executor that kept state of its own would return it here."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"the {self.name} executor keeps no state of its own; got {sorted(state)}.")


def run_each_step(step, batches, done: int, metrics, context: StepContext, progress) -> None:
    """One Python call of ``step`` per batch. Each batch is ``(x, y)``, or ``(x, y, global_rows)``
    for a replica's share of a global batch."""
    hooks, retuner, before_update = context.hooks, context.retuner, context.before_update
    after_step, should_stop = context.after_step, context.should_stop
    for done, (xb, yb, *global_rows) in enumerate(batches, start=done + 1):
        if hooks.wants_train_batch_begin:
            hooks.train_batch_begin(done - 1)
        if before_update is not None:
            before_update()
        step(xb, yb, metrics, *global_rows)
        if retuner is not None:
            retuner.after_step()
        if hooks.wants_train_batch_logs:
            hooks.train_batch_end(done - 1, metrics.results())  # a host sync, only when asked for
        progress.step(done, metrics.local_results)
        after_step(done)
        if should_stop():
            break
