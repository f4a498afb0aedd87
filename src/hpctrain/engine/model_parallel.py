"""The hooks through which a :class:`~hpctrain.engine.trainer.Trainer` trains one process's part
of a model split across processes (a pipeline stage: :mod:`hpctrain.distribute.pipeline_stage`).

The trainer keeps its loop (data preparation, the fit session's epochs, callbacks, History,
progress); the part supplies what only it knows: which share of each batch this process takes,
the executor that runs its steps, the forward of ``evaluate``/``predict`` through every part, how
the processes' weights are made equal, and what its inputs must look like. A trainer without a
part (``model_parallel=None``) trains the whole module in each process, its data shared among the
world's replicas.
"""

from __future__ import annotations

import torch


class ModelPart:
    """One process's part of a model split across processes; every hook is called by the trainer."""

    @property
    def data_share(self) -> tuple[int, int]:
        """``(index, count)``: this process's share of every batch among the ``count`` processes that
        share the data (the replicas of one part, not the whole world)."""
        raise NotImplementedError

    def check_fit(self, *, on_nonfinite: str, checkpoint, callbacks, steps_per_epoch) -> None:
        """Refuses, before anything starts, what ``fit`` cannot do with this part."""

    def check_labelled(self, *, sample_weight, weight_name: str) -> None:
        """Refuses labelled data this part cannot train on, before the data is read."""

    def output_shape(self, inputs: torch.Tensor, *, name: str) -> tuple[int, ...]:
        """The whole model's output shape for ``inputs`` (checked against what the first part takes),
        without running the model: its parts live in other processes."""
        raise NotImplementedError

    def settle_executor(self, data, batch_size):
        """``(batch_size, executor)``: the batch size checked and the executor that runs this part's
        steps (an :class:`~hpctrain.engine.executors.base.Executor`), in place of the plan's trials
        and :func:`~hpctrain.engine.executors.choice.choose_executor`."""
        raise NotImplementedError

    def start_equal(self) -> None:
        """Before ``fit``: every process starts from the same weights."""

    def after_epoch(self) -> None:
        """After each epoch's steps: every process holds the whole current model (callbacks see it)."""

    def evaluate_logs(self, data, batch_size: int, *, prefix: str, output_shape, batches, hooks) -> dict[str, float]:
        """Evaluation's logs through every part, the same on every process; ``hooks`` (a CallbackList
        or ``None``) get ``on_test_begin``/``on_test_end``."""
        raise NotImplementedError

    def predict_rows(self, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The model's outputs (before the output activation) for every row, on every process."""
        raise NotImplementedError
