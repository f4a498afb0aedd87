"""The trainer's plan: settled once by ``fit`` before the first training step, then held still.

``fit`` settles the engine's choices (batch size, threads, precision, compile, executor) in
:meth:`Trainer._settle_executor`; from there until ``fit`` returns the plan is not replaced, so
what callbacks and executors read stays one object. A choice changed while training (the thread
count re-measured, a CUDA graph that failed to capture) is noted with :meth:`PlanSettling.revise_plan`
and joins the plan, with its reason, when ``fit`` returns.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from hpctrain.engine import tuning
from hpctrain.engine.data import LoaderData


class PlanSettling:
    """The trainer's ``plan`` and the thread count it settles: a mixin of :class:`~hpctrain.engine.trainer.Trainer`."""

    _plan = None
    _plan_held = False
    _plan_revisions: list | None = None

    @property
    def plan(self):
        return self._plan

    @plan.setter
    def plan(self, plan) -> None:
        if self._plan_held:
            raise RuntimeError("the plan was settled before the first training step and is held until fit returns; "
                               "note a choice changed while training with revise_plan(key, value, reason).")
        self._plan = plan

    @contextlib.contextmanager
    def plan_held_still(self):
        """The epochs of one fit: the plan stays the object it is; revisions join it at the end."""
        self._plan_held, self._plan_revisions = True, []
        try:
            yield
        finally:
            revisions, self._plan_held, self._plan_revisions = self._plan_revisions, False, None
            for key, value, reason in revisions:
                self._plan = self._plan.with_choice(key, value, reason)

    def revise_plan(self, key: str, value, reason: str) -> None:
        """A choice changed while training; outside a fit's epochs it joins the plan at once."""
        if self._plan_revisions is None:
            self.plan = self.plan.with_choice(key, value, reason)
        else:
            self._plan_revisions.append((key, value, reason))

    def _tune_threads(self, step, data, batch_size: int, metrics) -> None:
        """Measure the thread counts up to the physical cores on real steps; keep the fastest.

        Small layers lose more to the fork/join of every parallel region than they gain from a
        second core, so the rule "one thread per core" is only the upper bound.
        """
        if not self.plan.tune_threads or isinstance(data, LoaderData):
            return
        batches = tuning.trial_batches(data, batch_size)
        if len(batches) <= tuning.WARMUP_STEPS:
            self.plan = dataclasses.replace(self.plan.with_choice(
                "threads", self.plan.threads, "one per physical core; an epoch has too few batches to measure fewer"),
                tune_threads=False)
            return
        self.module.train()
        best, measured = tuning.fastest_thread_count(step, batches, metrics, self.module, self.optimizer,
                                                     tuning.thread_candidates(self.plan.threads))
        timings = ", ".join(f"{threads} → {seconds * 1e6:.0f} us/step" for threads, seconds in measured.items())
        self.plan = dataclasses.replace(self.plan.with_choice("threads", best, f"measured on this model: {timings}"),
                                        tune_threads=False)
        self._apply_plan()

    def _thread_retuner(self, data) -> tuning.ThreadRetuner | None:
        """Re-measures the thread count while training, where hpctrain chose it and one process
        trains on the CPU (replicas must keep in step; a GPU step does not run on these threads)
        without checkpoints."""
        candidates = self._thread_candidates
        if (candidates is None or len(candidates) < 2 or self.plan.device.type != "cpu"
                or self.communicator is not None or isinstance(data, LoaderData)):
            return None
        if self._saver is not None:
            # Exact resume replays the same kernels on the same thread count; a reduction split
            # over another count of threads may round differently.
            return None
        if self._kept_retuner is None:
            self._kept_retuner = tuning.ThreadRetuner(candidates, torch.get_num_threads(),
                                                      on_switch=self._threads_switched)
        self._kept_retuner.follow(torch.get_num_threads())
        return self._kept_retuner

    def _threads_switched(self, threads: int, measured: dict[int, float]) -> None:
        timings = ", ".join(f"{count} → {seconds * 1e6:.0f} us/step" for count, seconds in sorted(measured.items()))
        where = f"epoch {self._run.epoch + 1}, step {self._run.step}" if self._run is not None else "training"
        self.revise_plan("threads", threads, f"re-measured while training ({where}): {timings}")
