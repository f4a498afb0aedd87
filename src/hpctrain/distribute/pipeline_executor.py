"""A pipeline stage's training steps behind the engine's executor protocol
(:class:`~hpctrain.engine.executors.base.Executor`): each step runs this process's stage of the
batch through ``torch.distributed.pipelining``'s schedule (forward and backward by micro-batches,
activations and gradients passed between the stages' processes), then sums the stage's gradients
over its replicas and updates its weights. Supplied by :class:`~hpctrain.distribute.pipeline_stage.PipelineStage`,
not chosen by :mod:`hpctrain.engine.executors.choice`."""

from __future__ import annotations

import torch

from hpctrain.engine.executors.base import EpochSpan, Executor
from hpctrain.engine.metrics import ModelOutput
from hpctrain.engine.optim import as_torch_optimizer
from hpctrain.engine.step import sum_gradients


class PipelineExecutor(Executor):
    """Loss and metrics are known on the last stage only: :meth:`results` broadcasts them (a
    collective every rank joins), so every rank reports the same logs."""

    name = "pipeline schedule"

    def __init__(self, stage, metrics):
        super().__init__(self.train_step, metrics)
        self.stage = stage

    def run(self, span: EpochSpan, progress) -> None:
        context, hooks = self.context, self.context.hooks
        self.stage.stage_module.train()
        for done, (xb, yb, *global_rows) in enumerate(span.each_batch(), start=span.done + 1):
            if hooks.wants_train_batch_begin:
                hooks.train_batch_begin(done - 1)
            self.train_step(xb, yb, global_rows[0] if global_rows else len(xb))
            if hooks.wants_train_batch_logs:
                hooks.train_batch_end(done - 1, self.results())  # a collective per batch
            progress.step(done, dict)  # the logs live on the last stage; rank 0 prints them at the epoch's end
            context.after_step(done)
            if context.should_stop():
                break

    def train_step(self, x: torch.Tensor, y: torch.Tensor, global_rows: int) -> None:
        """One replica's share ``x, y`` of a global batch of ``global_rows`` rows."""
        stage = self.stage
        # An uneven last batch can leave a replica with no rows: it only joins the gradients' sum.
        output = stage.train_through(x, y, global_rows) if x.shape[0] else None
        if stage.optimizer is not None:
            if stage.groups.stage_replicas is not None:
                sum_gradients(list(stage.stage_module.parameters()), stage.groups.stage_replicas)
            if self.context.before_update is not None:  # a scheduled rate, Keras's Adam epsilon
                self.context.before_update()
            optimizer = as_torch_optimizer(stage.optimizer)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if stage.is_last and output is not None:
            output = output.detach()
            with torch.no_grad():
                trainer = stage.trainer
                self.metrics.update(trainer.loss(output, y), ModelOutput(output, trainer.output_activation), y)

    def results(self) -> dict[str, float]:
        return self.stage.shared_results(self.metrics)

    def end_epoch(self) -> None:
        """The stage's gradients stay on ``.grad`` until the next step clears them; nothing to bring back."""
