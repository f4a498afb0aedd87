"""What one ``fit`` call holds while it trains: its data, executor, callbacks, history, checkpoints,
shuffle order, metrics and position; and the epoch it runs, step after step.

:class:`FitSettings` are ``fit``'s arguments, checked; :class:`FitSession` is made by the trainer
once the data is prepared and lives until ``fit`` returns.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import torch

from hpctrain.engine import fit_options, validation
from hpctrain.engine.data import LoaderData
from hpctrain.engine.executors.base import EpochSpan, StepContext
from hpctrain.engine.guard import check_on_nonfinite, first_nonfinite_output
from hpctrain.engine.progress import Progress, format_logs
from hpctrain.engine.run_state import FitRun
from hpctrain.errors import ConfigError, NonFiniteLossError


@dataclasses.dataclass(frozen=True)
class FitSettings:
    """``fit``'s arguments about the loop, checked."""

    batch_size: int | str
    epochs: int
    verbose: int
    validation_split: float
    steps_per_epoch: int | None
    validation_steps: int | None
    validation_batch_size: int | None
    validation_freq: object
    skip_steps: bool

    @classmethod
    def checked(cls, *, batch_size, epochs, verbose, validation_split, steps_per_epoch, validation_steps,
                validation_batch_size, validation_freq, on_nonfinite, rank: int) -> "FitSettings":
        skip_steps = check_on_nonfinite(on_nonfinite) == "skip_step"
        if batch_size != "auto":
            batch_size = validation.check_batch_size(batch_size)
        return cls(
            batch_size=batch_size,
            epochs=validation.check_whole_number(epochs, name="epochs", minimum=0),  # 0 trains nothing, as in Keras
            validation_split=validation.check_fraction(validation_split, name="validation_split"),
            steps_per_epoch=fit_options.check_steps(steps_per_epoch, "steps_per_epoch"),
            validation_steps=fit_options.check_steps(validation_steps, "validation_steps"),
            validation_batch_size=fit_options.check_steps(validation_batch_size, "validation_batch_size"),
            validation_freq=fit_options.check_validation_freq(validation_freq),
            verbose=resolve_verbose(verbose) if rank == 0 else 0,  # one voice: rank 0 prints
            skip_steps=skip_steps)


@dataclasses.dataclass
class FitSession:
    """One ``fit``: set up by the trainer in the order of ``Trainer.fit``, then :meth:`run_epochs`."""

    trainer: object
    settings: FitSettings
    data: object  # the trainer's prepared data: train, validation, output shape
    hooks: object  # a CallbackList, the History last
    history: object
    callback_params: dict = dataclasses.field(default_factory=dict)  # the callbacks' ``params``
    saver: object = None  # a RunCheckpointer, or None
    guard: object = None  # the NonFiniteGuard
    batch_size: int = 0
    executor: object = None
    steps: int | None = None
    shuffler: object = None
    stream: object = None  # with steps_per_epoch: the running pass over the training data
    validation_batches: object = None
    run: FitRun | None = None
    retuner: object = None
    before_update: object = None
    fit_batches: tuple | None = None  # (training data, batch size): to replay a bad step's batch

    @property
    def metrics(self):
        return self.executor.metrics

    @property
    def saver_args(self) -> dict:
        return dict(metrics=self.metrics, hooks=self.hooks, shuffler=self.shuffler)

    def step_context(self) -> StepContext:
        trainer = self.trainer
        return StepContext(hooks=self.hooks, before_update=self.before_update, retuner=self.retuner,
                           after_step=self.after_step, after_steps=self.after_steps,
                           should_stop=lambda: trainer.stop_training, note_choice=self._note_choice)

    def _note_choice(self, key: str, value, reason: str) -> None:
        self.trainer.revise_plan(key, value, reason)

    # --- the epochs -----------------------------------------------------------------------------

    def run_epochs(self) -> dict[str, float]:
        logs, trainer = {}, self.trainer
        for epoch in range(self.run.epoch, self.settings.epochs if not trainer.stop_training else self.run.epoch):
            logs = self.train_epoch(epoch)
            if trainer.stop_training:
                break
        return logs

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch: its steps, the non-finite check, validation, callbacks and the epoch's checkpoint."""
        run, hooks, saver, trainer, settings = self.run, self.hooks, self.saver, self.trainer, self.settings
        run.epoch = epoch
        if settings.verbose:
            print(f"Epoch {epoch + 1}/{settings.epochs}")
        hooks.call("on_epoch_begin", epoch, {})
        progress = Progress(verbose=settings.verbose, total_steps=self.steps)
        self.guard.reset()
        logs = trainer._run_epoch(self.executor, self.data.train, self.batch_size, self.shuffler, self.metrics, hooks,
                                  progress, stream=self.stream)
        if self.retuner is not None:
            self.retuner.interrupt()
        self.executor.end_epoch()
        self.raise_if_a_step_was_not_finite()
        trainer._sync_weights_after_epoch()
        if settings.skip_steps:
            logs["skipped_steps"] = self.guard.skipped_steps()  # a host sync per epoch
        _raise_if_not_finite(logs, epoch)
        self._validate(epoch, logs)
        progress.finish(self.steps, logs)
        hooks.call("on_epoch_end", epoch, logs)
        run.epoch, run.step, run.order = epoch + 1, 0, None
        if saver is not None and saver.due_after_epoch:
            saver.save(run, finished=trainer.stop_training, **self.saver_args)
        return logs

    def _validate(self, epoch: int, logs: dict) -> None:
        validation_data = self.data.validation
        if validation_data is not None and fit_options.validates_after(epoch, self.settings.validation_freq):
            logs.update(self.trainer._evaluate_logs(validation_data, self.trainer.inference_batch_size, prefix="val_",
                                                    output_shape=self.data.output_shape,
                                                    batches=self.validation_batches(), hooks=self.hooks))

    def epoch_span(self, data, batch_size: int, shuffler, stream=None) -> EpochSpan:
        """The steps this epoch has left and where their batches come from. Call after the
        metrics' reset: an epoch resumed from a checkpoint takes its saved sums back here."""
        if stream is not None:  # steps_per_epoch: the epoch takes the next batches of a running pass
            return EpochSpan(done=0, batches=stream.epoch())
        run = self.run
        done = run.step if run.resumed_mid_epoch else 0
        if run.resumed_mid_epoch:  # the saved permutation, sums and rate; the remaining batches only
            run.resumed_mid_epoch = False
            self.saver.resume_epoch(self.metrics)
        if isinstance(data, LoaderData):
            return EpochSpan(done=done, batches=itertools.islice(_loader_pass(data, run, resumed=done > 0), done, None))
        if done:
            order = run.order if run.order is not None else torch.arange(len(data), device=data.x.device)
        else:
            order = shuffler.permutation(len(data)) if shuffler else None
        run.order = order
        if done:
            order = order[done * batch_size:]
        share = self.trainer.data_share()
        if share is not None:
            return EpochSpan(done=done, batches=data.shard_batches(batch_size, *share, order=order))
        return EpochSpan(done=done, data=data, order=order, batch_size=batch_size)

    # --- around the steps ----------------------------------------------------------------------

    def after_step(self, done: int) -> None:
        """Counts the step; saves a checkpoint when one is due (a host sync at those steps only)."""
        run = self.run
        run.step = done
        run.global_step += 1
        if self.saver is not None and self.saver.due_after_step(run):
            self.raise_if_a_step_was_not_finite()  # never save a state past a bad step
            self.saver.save(run, **self.saver_args)

    def after_steps(self, done: int, count: int) -> None:
        """Counts ``count`` steps run in one call (no checkpoints between them: see the executors' choice)."""
        self.run.step = done
        self.run.global_step += count

    def raise_if_a_step_was_not_finite(self) -> None:
        """Reads the guard's device flag: a host sync, paid at epoch ends and checkpoint saves only."""
        run = self.run
        if self.guard.skip_steps:
            return
        bad = self.guard.first_bad_step(run.step)
        if bad is None:
            return
        kept = ""
        if self.saver is not None:
            from hpctrain.engine.checkpoint import checkpoint_files

            files = checkpoint_files(self.saver.config.directory)
            kept = f" The last good checkpoint, {files[0]}, is kept." if files else ""
        raise NonFiniteLossError(
            f"the training loss or its gradients became NaN or infinite at epoch {run.epoch + 1}, step {bad} of "
            f"{run.step} done in that epoch{self._first_nonfinite_output(bad)}. Training stopped; the weights are "
            f"those from before that step.{kept} Lower the learning rate, check the inputs' scale, or use a "
            "from_logits loss for stability; fit(on_nonfinite='skip_step') skips such steps instead.")

    def _first_nonfinite_output(self, bad_step: int) -> str:
        """Names what went non-finite first, by recomputing the bad step on its batch: paid once, after the
        stop, so the steps themselves check everything in one fused call."""
        batch = self._batch_of_step(bad_step)
        if batch is None:
            return ""
        trainer = self.trainer
        what = first_nonfinite_output(trainer.module, trainer.loss, batch[0], batch[1], penalty=trainer.penalty,
                                      precision=trainer.plan.precision)
        if what is None:
            return " (recomputed on that step's batch everything is finite: the step is not reproducible)"
        return f"; the first non-finite value was {what}"

    def _batch_of_step(self, step: int):
        """This epoch's ``step``-th batch (1-based) again, from the epoch's order; ``None`` where the epoch
        continues a running pass (``steps_per_epoch``)."""
        if self.fit_batches is None:
            return None
        data, batch_size = self.fit_batches
        share = self.trainer.data_share()
        if isinstance(data, LoaderData):
            batches = data.batches()
        elif share is not None:
            batches = data.shard_batches(batch_size, *share, order=self.run.order)
        else:
            batches = data.batches(batch_size, order=self.run.order)
        return next(itertools.islice(batches, step - 1, None), None)


def _loader_pass(data: LoaderData, run: FitRun, *, resumed: bool):
    """The batches of one pass of a DataLoader. A shuffling loader draws its order from torch's
    RNG as the pass begins; the RNG state then is kept in the run (and its checkpoints), so a
    resumed epoch begins its pass from the same state: the same order, whose batches already
    done are then skipped."""
    if resumed and run.loader_rng is not None:
        now = torch.get_rng_state()
        torch.set_rng_state(run.loader_rng)
        batches = data.batches()
        torch.set_rng_state(now)  # the RNG as saved, for what the steps draw (dropout)
        return batches
    run.loader_rng = torch.get_rng_state()
    return data.batches()


def resolve_verbose(verbose) -> int:
    if verbose == "auto":
        return 1
    if verbose not in (0, 1, 2):
        raise ConfigError(f"verbose must be 'auto', 0, 1 or 2; got {verbose!r}.")
    return int(verbose)


def _raise_if_not_finite(logs: dict, epoch: int) -> None:
    loss = logs.get("loss")
    if loss is not None and math.isnan(loss) and logs.get("skipped_steps"):
        raise NonFiniteLossError(
            f"every step of epoch {epoch + 1} was non-finite and skipped ({logs['skipped_steps']:.0f} steps): "
            "nothing trained. Lower the learning rate, or check the inputs and labels for extreme values."
        )
    if loss is not None and not math.isfinite(loss):
        raise NonFiniteLossError(
            f"the training loss became {loss} during epoch {epoch + 1} ({format_logs(logs)}). Lower the "
            "learning rate, check the inputs' scale, or use a from_logits loss for stability."
        )
