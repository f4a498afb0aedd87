"""The native API and the engine under the Keras front end: ``Trainer.fit/evaluate/predict``.

``fit`` -> ``_run_epoch`` -> step executor. Everything about the hardware arrives in one
:class:`~hpctrain.hardware.Plan`; the trainer applies it and never re-detects anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import itertools
import math
import os

import numpy as np
import torch

from hpctrain.engine import autotune, fit_options, native_checks, tuning, validation
from hpctrain.engine.callbacks import Callback, CallbackList, History
from hpctrain.engine.checkpoint import CheckpointConfig
from hpctrain.engine.cuda_graph import GraphedSteps, graph_steps_per_launch
from hpctrain.engine.data import LoaderData, ResidentData, concat_rows, split_weights, to_tensor
from hpctrain.engine.guard import NonFiniteGuard, SkippingStep, check_on_nonfinite, first_nonfinite_output
from hpctrain.engine.metrics import DeferredMetricSet, Metric, MetricSet, ModelOutput, resolve_metric
from hpctrain.engine.optim import as_torch_optimizer, build_optimizer, optimizer_class_by_name, scheduled_rate
from hpctrain.engine.progress import Progress, format_logs
from hpctrain.engine.run_state import FitRun, RunCheckpointer
from hpctrain.engine import native
from hpctrain.engine.static_step import StaticStep, why_not_static
from hpctrain.engine.statistics import check_statistics, running_statistics
from hpctrain.engine.step import AutogradStep, autocast
from hpctrain.errors import ConfigError, InputError, NonFiniteLossError
from hpctrain.hardware import host_memory
from hpctrain.hardware.gemm import ONEDNN_MIN_MACS

# Evaluation and prediction keep no activations for backward, so they run in large batches.
INFERENCE_BATCH = 8192


@dataclasses.dataclass
class _PreparedData:
    train: ResidentData | LoaderData
    validation: ResidentData | LoaderData | None
    output_shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class _EpochLoop:
    """What every epoch of one ``fit`` call runs with."""

    step: object
    data: _PreparedData
    batch_size: int
    shuffler: "_Shuffler | None"
    metrics: MetricSet
    hooks: CallbackList
    verbose: int
    epochs: int
    steps: int | None
    stream: object
    validation_batches: object
    validation_freq: object
    skip_steps: bool


@contextlib.contextmanager
def _objects_so_far_skipped_by_gc():
    """Keeps the objects alive at the start of training out of the garbage collector's full passes.

    A full pass walks every object the process holds (torch's import alone leaves ~10^5), so the
    first one that falls inside training stalls a step by ~70 ms: measured in the seed workload's
    first epoch. Objects made during training are collected as usual; the frozen ones are handed
    back to the collector when training ends.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class Trainer:
    """Trains any ``torch.nn.Module``.

    ``loss``: an :class:`~hpctrain.engine.losses.Loss` or any ``fn(prediction, target)``.
    ``optimizer``: a ``torch.optim.Optimizer``, a name (``"adam"``, ``"sgd"``, …), or a factory
    ``fn(params, device)`` (called after the module has moved to the plan's device, as fused
    kernels need) returning an optimizer or a :class:`~hpctrain.engine.optim.LazyOptimizer`.
    ``output_activation``: applied to the module's output for ``predict`` and for metrics that
    need probabilities, when the module returns logits.
    ``penalty``: ``fn() -> scalar`` added to the training loss (weight regularization).
    ``inference_batch_size``: rows per batch in evaluation, validation and prediction when no
    batch size is given (models with large activations, such as convnets, want fewer).
    ``statistics``: tensors the forward updates besides the module's buffers (moving averages kept
    as Parameters without gradient); like the buffers, they keep their last good values through a
    non-finite step.
    """

    # What shuffles fit's epochs: fn(device, communicator) -> ``permutation(n)`` and a ``generator``
    # whose state checkpoints keep. A front end may give its own order (the Keras seam gives Keras's).
    shuffler_factory = staticmethod(lambda device, communicator: _Shuffler(device, communicator))

    def __init__(self, module: torch.nn.Module, *, loss, optimizer, metrics=(), output_activation=None,
                 penalty=None, plan=None, inference_batch_size: int = INFERENCE_BATCH, statistics=None):
        if plan is None:
            from hpctrain.hardware import make_plan

            plan = make_plan()
        self.plan = plan
        # The plan records the executor fit settles on; what was asked for decides what may be tried.
        self.requested_executor = plan.executor
        self.module = module.to(plan.device)
        self.loss = native_checks.resolve_loss(loss)
        self.optimizer = _build_optimizer(optimizer, self.module, plan.device)
        self.metric_specs = list(metrics)
        self.output_activation = output_activation
        self.penalty = penalty
        self.inference_batch_size = inference_batch_size
        self.statistics = check_statistics(statistics)
        self._stop_training = False
        # A front end's model whose own ``stop_training`` callbacks set (Keras's model); None: this trainer.
        self.stop_source = None
        self.history = None
        self._graphed = None
        self._compiled = None
        self._before_update = None  # sets a scheduled learning rate before each update
        self._run = self._saver = self._guard = None
        self._fit_batches = None  # (training data, batch size): to replay a bad step's batch
        # Replicas of a data-parallel strategy share work through this; None in a single process.
        self.communicator = plan.communicator if plan.world_size > 1 else None
        # Thread counts to move between while training, where the plan leaves the count to hpctrain.
        self._thread_candidates = tuning.thread_candidates(plan.threads) if plan.tune_threads else None
        self._retuner = self._kept_retuner = None  # the one this fit uses; the one kept across fits

    @property
    def stop_training(self) -> bool:
        source = self.stop_source
        return bool(source.stop_training) if source is not None else self._stop_training

    @stop_training.setter
    def stop_training(self, value: bool) -> None:
        self._stop_training = bool(value)
        if self.stop_source is not None:
            self.stop_source.stop_training = bool(value)

    # --- one step, for subclasses to change --------------------------------------------------

    def train_step(self, x, y):
        """One training step on a batch of inputs ``x`` and targets ``y``; returns ``(loss, prediction)``,
        from which the logged loss and metrics are computed.

        Override it to change what a step does (clip gradients, add a loss term, update twice);
        the loop around it stays: callbacks, checkpoints and exact resume, replicas, progress.
        Build it from the phases: ``self.forward(x)``, ``self.compute_loss(prediction, y)``,
        ``self.backward(loss)`` (with replicas it sums the gradients) and ``self.apply_update()``
        (the optimizer, guarded against non-finite steps). A trainer that overrides it trains on
        the autograd executor.
        """
        return self._current_step.standard_step(x, y)

    def _own_step_on(self, step):
        """``train_step`` run with ``step``'s phases: the executor calling it (measuring trials
        build executors of their own, without the replicas' collectives)."""

        def run(x, y):
            self._current_step = step
            return self.train_step(x, y)

        return run

    def forward(self, x):
        return self._current_step.forward_pass(x)

    def compute_loss(self, prediction, y):
        return self._current_step.compute_loss(prediction, y)

    def backward(self, loss) -> None:
        self._current_step.backward(loss)

    def apply_update(self) -> None:
        self._current_step.apply_update()

    # --- the three entry points -------------------------------------------------------------

    def fit(self, x, y=None, *, batch_size=32, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, initial_epoch=0,
            callback_model=None, sample_weight=None, class_weight=None, steps_per_epoch=None,
            validation_steps=None, validation_batch_size=None, validation_freq=1,
            checkpoint: CheckpointConfig | None = None, on_nonfinite: str = "raise") -> History:
        """``checkpoint``: save the whole training state there and resume from it (see README,
        "Checkpoints and exact resume"); a ``BackupAndRestore`` callback does the same.
        ``on_nonfinite``: ``"raise"`` stops at a NaN/Inf loss or gradient, ``"skip_step"`` skips
        that step's update and counts it in ``history.history["skipped_steps"]`` (README, "Non-finite guard")."""
        native_checks.check_trainable(self.module)
        skip_steps = check_on_nonfinite(on_nonfinite) == "skip_step"
        if batch_size != "auto":
            batch_size = validation.check_batch_size(batch_size)
        epochs = validation.check_whole_number(epochs, name="epochs", minimum=0)  # 0 trains nothing, as in Keras
        validation_split = validation.check_fraction(validation_split, name="validation_split")
        steps_per_epoch = fit_options.check_steps(steps_per_epoch, "steps_per_epoch")
        validation_steps = fit_options.check_steps(validation_steps, "validation_steps")
        validation_batch_size = fit_options.check_steps(validation_batch_size, "validation_batch_size")
        validation_freq = fit_options.check_validation_freq(validation_freq)
        verbose = _resolve_verbose(verbose) if self.plan.rank == 0 else 0  # one voice: rank 0 prints
        self._apply_plan()
        self._start_replicas_equal()
        data = self._prepare_fit_data(x, y, validation_split, validation_data, sample_weight, class_weight)
        history = History()
        params = {"verbose": verbose, "epochs": epochs, "steps": None}
        hooks = CallbackList([*(callbacks or []), history], model=callback_model or self, params=params)
        self._saver = saver = self._checkpointer(checkpoint, hooks.callbacks, steps_per_epoch)
        self._guard = NonFiniteGuard(self.plan.device, skip_steps=skip_steps,
                                     statistics=running_statistics(self.module, self.statistics))
        batch_size, step, train_metrics = self._settle_plan(data, batch_size, epochs, hooks)
        if skip_steps:
            step = SkippingStep(step, self._guard)
        self._choose_step_loop(step, hooks)
        steps = params["steps"] = steps_per_epoch or _steps_per_epoch(data.train, batch_size)
        self._before_update = scheduled_rate(self.optimizer)
        self._retuner = self._thread_retuner(data.train)
        shuffler = self.shuffler_factory(self.plan.device, self.communicator) if shuffle else None
        train_stream = None if steps_per_epoch is None else fit_options.BatchStream(
            lambda: self._pass_batches(data.train, batch_size, shuffler), steps_per_epoch,
            _steps_per_epoch(data.train, batch_size))
        self._fit_batches = (data.train, batch_size) if train_stream is None else None
        validation_batches = self._validation_batches(
            data.validation, validation_steps, validation_batch_size or batch_size,
            per_batch=hooks.wants("on_test_batch_begin", "on_test_batch_end"))
        self.stop_training = False
        hooks.call("on_train_begin", {})
        # Keras's BackupAndRestore, restoring in on_train_begin, sets the model's ``_initial_epoch``.
        initial_epoch = getattr(callback_model, "_initial_epoch", None) or initial_epoch
        run = (saver.restore(metrics=train_metrics, hooks=hooks, shuffler=shuffler) if saver else None) or FitRun(
            epoch=initial_epoch)
        if run.global_step:  # resumed: the schedule's clock continues from the restored update count
            self._before_update = scheduled_rate(self.optimizer)
        self._guard.count_updates_on_host(self.optimizer if self._before_update is not None else None)
        self._run, self._saver_args = run, dict(metrics=train_metrics, hooks=hooks, shuffler=shuffler)
        loop = _EpochLoop(step=step, data=data, batch_size=batch_size, shuffler=shuffler, metrics=train_metrics,
                          hooks=hooks, verbose=verbose, epochs=epochs, steps=steps, stream=train_stream,
                          validation_batches=validation_batches, validation_freq=validation_freq,
                          skip_steps=skip_steps)
        logs = {}
        with _objects_so_far_skipped_by_gc():
            for epoch in range(run.epoch, epochs if not self.stop_training else run.epoch):
                logs = self._train_epoch(epoch, loop)
                if self.stop_training:
                    break
        hooks.call("on_train_end", logs)
        if saver is not None:
            saver.finish()
        if self._build_step_loop_after_fit:
            native.build_in_background()
        self._run = self._saver = None
        self.history = history
        return history

    def _train_epoch(self, epoch: int, loop: "_EpochLoop") -> dict[str, float]:
        """One epoch: its steps, the non-finite check, validation, callbacks and the epoch's checkpoint."""
        run, hooks, saver = self._run, loop.hooks, self._saver
        run.epoch = epoch
        if loop.verbose:
            print(f"Epoch {epoch + 1}/{loop.epochs}")
        hooks.call("on_epoch_begin", epoch, {})
        progress = Progress(verbose=loop.verbose, total_steps=loop.steps)
        self._guard.reset()
        logs = self._run_epoch(loop.step, loop.data.train, loop.batch_size, loop.shuffler, loop.metrics, hooks,
                               progress, stream=loop.stream)
        if self._retuner is not None:
            self._retuner.interrupt()
        if hasattr(loop.step, "sync_gradients"):
            loop.step.sync_gradients()  # .grad as of the epoch's last step, for callbacks and users
        self._raise_if_a_step_was_not_finite()
        self._average_buffers_across_replicas()
        if loop.skip_steps:
            logs["skipped_steps"] = self._guard.skipped_steps()  # a host sync per epoch
        _raise_if_not_finite(logs, epoch)
        validation = loop.data.validation
        if validation is not None and fit_options.validates_after(epoch, loop.validation_freq):
            logs.update(self._evaluate_logs(validation, self.inference_batch_size, prefix="val_",
                                            output_shape=loop.data.output_shape, batches=loop.validation_batches(),
                                            hooks=hooks))
        progress.finish(loop.steps, logs)
        hooks.call("on_epoch_end", epoch, logs)
        run.epoch, run.step, run.order = epoch + 1, 0, None
        if saver is not None and saver.due_after_epoch:
            saver.save(run, finished=self.stop_training, **self._saver_args)
        return logs

    def _checkpointer(self, config: CheckpointConfig | None, callbacks, steps_per_epoch) -> RunCheckpointer | None:
        """From ``fit(checkpoint=...)`` or a ``BackupAndRestore`` callback (at most one of them)."""
        configs = [config] if config is not None else []
        configs += [c.checkpoint_config for c in callbacks if getattr(c, "checkpoint_config", None) is not None]
        if len(configs) > 1:
            raise ConfigError(f"fit got {len(configs)} checkpoint settings (checkpoint= and BackupAndRestore "
                              "callbacks); give one.")
        if configs and not isinstance(configs[0], CheckpointConfig):
            raise ConfigError(f"checkpoint must be a CheckpointConfig; got {type(configs[0]).__name__}.")
        if configs and steps_per_epoch is not None:
            raise ConfigError("checkpoints with steps_per_epoch are not supported yet (an epoch then continues a "
                              "running pass over the data); drop steps_per_epoch or the checkpoint.")
        return RunCheckpointer(configs[0], self) if configs else None

    def evaluate(self, x, y=None, *, batch_size=None, verbose="auto", return_dict=False, sample_weight=None,
                 callbacks=None, callback_model=None):
        """``callbacks`` get Keras's ``on_test_*`` hooks (``on_test_batch_*`` cost a host sync per batch,
        and only when a callback defines them)."""
        batch_size = validation.check_inference_batch_size(batch_size, default=self.inference_batch_size)
        self._apply_plan()
        if _is_loader(x):
            data = self._evaluation_loader(x, y, sample_weight)
            steps = data.steps
        else:
            data, _ = self._prepare_labelled(x, y, name="x", sample_weight=sample_weight)
            steps = _steps_per_epoch(data, batch_size or 32)
        progress = Progress(verbose=_resolve_verbose(verbose) if self.plan.rank == 0 else 0, total_steps=steps)
        hooks = CallbackList(callbacks or [], model=callback_model or self,
                             params={"verbose": verbose, "epochs": 1, "steps": steps})
        logs = self._evaluate_logs(data, batch_size or self.inference_batch_size, hooks=hooks)
        progress.finish(steps, logs)
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def _evaluation_loader(self, loader, y, sample_weight) -> LoaderData:
        if y is not None or sample_weight is not None:
            raise ConfigError("evaluate on a DataLoader takes the labels (and sample weights) from its batches; "
                              "give no y or sample_weight beside it.")
        data = LoaderData(loader, self.plan.device)
        return self._with_loader_targets(_PreparedData(data, None, self._loader_output_shape(data))).train

    def predict(self, x, *, batch_size=None, verbose=0, callbacks=None, callback_model=None) -> np.ndarray:
        """``callbacks`` get ``on_predict_begin``/``on_predict_end`` (per-batch predict hooks are not
        called: the rows are predicted in large batches)."""
        if _is_loader(x):
            raise ConfigError("predict takes the inputs as one array or tensor, not a DataLoader; concatenate the "
                              "loader's inputs (torch.cat([xb for xb, *_ in loader])) or predict batch by batch.")
        batch_size = validation.check_inference_batch_size(batch_size, default=self.inference_batch_size)
        self._apply_plan()
        inputs = self._inputs_tensor(x, name="x")
        steps = _steps_per_epoch(ResidentData(inputs, None), batch_size or 32)
        progress = Progress(verbose=_resolve_verbose(verbose) if self.plan.rank == 0 else 0, total_steps=steps)
        hooks = CallbackList(callbacks or [], model=callback_model or self,
                             params={"verbose": verbose, "epochs": 1, "steps": steps})
        hooks.call("on_predict_begin", {})
        if self.communicator is None:
            outputs = self.predict_tensor(inputs, batch_size=batch_size or self.inference_batch_size)
        else:  # each replica predicts its contiguous share; the gather restores input order
            share = ResidentData(inputs, None).shard(self.plan.rank, self.plan.world_size).x
            outputs = self.communicator.all_gather_rows(
                self.predict_tensor(share, batch_size=batch_size or self.inference_batch_size))
        progress.finish(steps, {})
        hooks.call("on_predict_end", {})
        return outputs.cpu().numpy()

    def predict_tensor(self, inputs: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
        batch_size = batch_size or self.inference_batch_size
        self.module.eval()
        try:
            with torch.inference_mode(), autocast(self.plan.device, self.plan.precision):
                parts = [self._activate(self.module(xb)).float()
                         for xb, _ in ResidentData(inputs, None).batches(batch_size)]
                return concat_rows(parts) if parts else self._activate(self.module(inputs)).float()
        except RuntimeError:
            native_checks.explain_forward_error(self.module, inputs)  # inputs that do not fit the model
            raise

    # --- weights ------------------------------------------------------------------------------

    def get_weights(self) -> list[np.ndarray]:
        """Every tensor of the module's state in ``state_dict`` order: parameters and buffers (batch
        norm's running statistics), as Keras's list holds non-trainable weights too."""
        return [tensor.detach().cpu().numpy().copy() for tensor in self._state_tensors()]

    def save_weights(self, filepath) -> None:
        """The module's ``state_dict`` by ``torch.save``, written under a temporary name then renamed
        (never a truncated file); :meth:`load_weights` or ``module.load_state_dict(torch.load(path))``
        reads it back."""
        filepath = str(filepath)
        temporary = f"{filepath}.tmp"
        torch.save(self.module.state_dict(), temporary)
        os.replace(temporary, filepath)

    def load_weights(self, filepath) -> None:
        native_checks.load_state(self.module, filepath, self.plan.device)

    def _state_tensors(self) -> list[torch.Tensor]:
        return list(self.module.state_dict(keep_vars=True).values())

    def set_weights(self, weights) -> None:
        params = self._state_tensors()
        if len(weights) != len(params):
            raise InputError(f"set_weights got {len(weights)} arrays but the model has {len(params)} weights "
                             "(parameters and buffers, as get_weights() lists them).")
        with torch.no_grad():
            for param, value in zip(params, weights):
                value = torch.as_tensor(np.asarray(value), dtype=param.dtype)
                if value.shape != param.shape:
                    raise InputError(
                        f"set_weights: an array shaped {tuple(value.shape)} was given for a weight shaped "
                        f"{tuple(param.shape)}; give the arrays in get_weights() order."
                    )
                param.copy_(value)

    # --- the epoch ----------------------------------------------------------------------------

    @staticmethod
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

    def _run_epoch(self, step, data, batch_size, shuffler, metrics: MetricSet, hooks: CallbackList,
                   progress: Progress, stream=None) -> dict[str, float]:
        self.module.train()
        metrics.reset()
        if stream is not None:  # steps_per_epoch: the epoch takes the next batches of a running pass
            return self._run_steps(step, stream.epoch(), 0, metrics, hooks, progress)
        run = self._run
        done = run.step if run.resumed_mid_epoch else 0
        if run.resumed_mid_epoch:  # the saved permutation, sums and rate; the remaining batches only
            run.resumed_mid_epoch = False
            self._saver.resume_epoch(metrics)
        if isinstance(data, LoaderData):
            return self._run_steps(step, itertools.islice(self._loader_pass(data, run, resumed=done > 0), done, None),
                                   done, metrics, hooks, progress)
        if done:
            order = run.order if run.order is not None else torch.arange(len(data), device=data.x.device)
        else:
            order = shuffler.permutation(len(data)) if shuffler else None
        run.order = order
        if done:
            order = order[done * batch_size:]
        if self.communicator is not None:
            batches = data.shard_batches(batch_size, self.plan.rank, self.plan.world_size, order=order)
            return self._run_steps(step, batches, done, metrics, hooks, progress)
        if self._graphed is not None:
            done, order = self._run_graphed(data, order, metrics, progress)
            if self.stop_training:
                return metrics.results()
        ones_column = getattr(step, "input_ones_column", False)
        loop = native.step_loop() if self._native_steps else None
        if loop is not None:
            runs = data.batch_runs(batch_size, order=order, ones_column=ones_column)
            return self._run_step_runs(step, loop, runs, done, metrics, progress)
        batches = data.batches(batch_size, order=order, ones_column=ones_column)
        return self._run_steps(step, batches, done, metrics, hooks, progress)

    def _pass_batches(self, data, batch_size: int, shuffler):
        """The batches of one pass over the training data: shuffled, and this replica's share."""
        if isinstance(data, LoaderData):
            return data.batches()
        order = shuffler.permutation(len(data)) if shuffler else None
        if self.communicator is not None:
            return data.shard_batches(batch_size, self.plan.rank, self.plan.world_size, order=order)
        return data.batches(batch_size, order=order)

    def _validation_batches(self, data, validation_steps: int | None, batch_size: int, *, per_batch: bool = False):
        """A function giving each validation pass's batches: all of them, or with ``validation_steps``
        the next that many batches of ``batch_size`` (Keras carries on where the last pass stopped).
        ``None`` lets validation take the inference batch size, except where a callback watches
        each validation batch (``per_batch``): it then sees Keras's batches of ``batch_size``."""
        if data is None or validation_steps is None and not per_batch:
            return lambda: None
        data = self._share_of(data)
        if validation_steps is None:
            return data.batches if isinstance(data, LoaderData) else lambda: data.batches(batch_size)
        new_pass = data.batches if isinstance(data, LoaderData) else lambda: data.batches(batch_size)
        stream = fit_options.BatchStream(new_pass, validation_steps, _steps_per_epoch(data, batch_size),
                                         what="validation")
        return stream.epoch

    def _share_of(self, data):
        if self.communicator is not None and isinstance(data, ResidentData):
            return data.shard(self.plan.rank, self.plan.world_size)  # sums are reduced in results()
        return data

    def _run_graphed(self, data: ResidentData, order, metrics, progress) -> tuple[int, torch.Tensor]:
        """Whole groups of steps through the CUDA graph; returns steps done and the rows left."""
        graphed = self._graphed
        if order is None:
            order = torch.arange(len(data), device=data.x.device)
        done, start = 0, 0
        while start + graphed.rows <= len(order):
            try:
                graphed.run(order[start:start + graphed.rows], metrics)
            except RuntimeError as exc:  # a kernel that cannot be captured: carry on eagerly
                self._graphed = None
                self.plan = self.plan.with_choice("cuda_graph", False, f"capture failed: {exc}".splitlines()[0])
                break
            start += graphed.rows
            done += graphed.steps_per_launch
            if self._run is not None:
                self._run.step = done  # the non-finite guard names steps within the epoch from this
            progress.step(done, metrics.local_results)
            if self.stop_training:
                break
        return done, order[start:]

    def _run_steps(self, step, batches, done: int, metrics, hooks: CallbackList, progress: Progress):
        """Each batch is ``(x, y)``, or ``(x, y, global_rows)`` for a replica's share of a global batch."""
        retuner = self._retuner
        for done, (xb, yb, *global_rows) in enumerate(batches, start=done + 1):
            if hooks.wants_train_batch_begin:
                hooks.train_batch_begin(done - 1)
            if self._before_update is not None:
                self._before_update()
            step(xb, yb, metrics, *global_rows)
            if retuner is not None:
                retuner.after_step()
            if hooks.wants_train_batch_logs:
                hooks.train_batch_end(done - 1, metrics.results())  # a host sync, only when asked for
            progress.step(done, metrics.local_results)
            self._after_step(done)
            if self.stop_training:
                break
        return metrics.results()

    def _run_step_runs(self, step, loop, runs, done: int, metrics, progress: Progress):
        """Runs of batches, each run's steps in one call of the C++ ``loop``; nothing per step here
        (no per-batch callbacks, schedule or checkpoints, see :meth:`_choose_step_loop`)."""
        retuner, run = self._retuner, self._run
        for xs, ys, sizes in runs:
            step.run_many(loop, xs, ys, sizes, metrics)
            done += len(sizes)
            if retuner is not None:
                retuner.after_step(len(sizes))
            progress.step(done, metrics.local_results)
            if run is not None:
                run.step = done
                run.global_step += len(sizes)
            if self.stop_training:
                break
        return metrics.results()

    def _after_step(self, done: int) -> None:
        """Counts the step; saves a checkpoint when one is due (a host sync at those steps only)."""
        run = self._run
        if run is None:
            return
        run.step = done
        run.global_step += 1
        if self._saver is not None and self._saver.due_after_step(run):
            self._raise_if_a_step_was_not_finite()  # never save a state past a bad step
            self._saver.save(run, **self._saver_args)

    def _raise_if_a_step_was_not_finite(self) -> None:
        """Reads the guard's device flag: a host sync, paid at epoch ends and checkpoint saves only."""
        run = self._run
        if self._guard.skip_steps:
            return
        bad = self._guard.first_bad_step(run.step)
        if bad is None:
            return
        kept = ""
        if self._saver is not None:
            from hpctrain.engine.checkpoint import checkpoint_files

            files = checkpoint_files(self._saver.config.directory)
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
        what = first_nonfinite_output(self.module, self.loss, batch[0], batch[1], penalty=self.penalty,
                                      precision=self.plan.precision)
        if what is None:
            return " (recomputed on that step's batch everything is finite: the step is not reproducible)"
        return f"; the first non-finite value was {what}"

    def _batch_of_step(self, step: int):
        """This epoch's ``step``-th batch (1-based) again, from the epoch's order; ``None`` where the epoch
        continues a running pass (``steps_per_epoch``)."""
        if self._fit_batches is None:
            return None
        data, batch_size = self._fit_batches
        if isinstance(data, LoaderData):
            batches = data.batches()
        elif self.communicator is not None:
            batches = data.shard_batches(batch_size, self.plan.rank, self.plan.world_size, order=self._run.order)
        else:
            batches = data.batches(batch_size, order=self._run.order)
        return next(itertools.islice(batches, step - 1, None), None)

    def _evaluate_logs(self, data, batch_size: int, prefix: str = "", output_shape=None,
                       batches=None, hooks: CallbackList | None = None) -> dict[str, float]:
        metrics = self._metric_set(output_shape or self._output_shape_of(data), prefix=prefix)
        data = self._share_of(data)
        hooks = hooks or CallbackList([], model=self, params={})
        per_batch = hooks.wants("on_test_batch_begin", "on_test_batch_end")
        hooks.call("on_test_begin", {})
        self.module.eval()
        with torch.inference_mode(), autocast(self.plan.device, self.plan.precision):
            if batches is None:
                batches = data.batches() if isinstance(data, LoaderData) else data.batches(batch_size)
            for batch, (xb, yb) in enumerate(batches):
                if per_batch:
                    hooks.call("on_test_batch_begin", batch, {})
                yb, weights = split_weights(yb)
                logits = self.module(xb)
                loss = self.loss(logits, yb) if weights is None else self.loss.weighted(logits, yb, weights)
                if self.penalty is not None:
                    loss = loss + self.penalty()
                metrics.update(loss, ModelOutput(logits, self.output_activation), yb, weights)
                if per_batch:  # a host sync, asked for
                    hooks.call("on_test_batch_end", batch, _unprefixed(metrics.results(), prefix))
        logs = metrics.results()
        hooks.call("on_test_end", _unprefixed(logs, prefix))
        return logs

    def _average_buffers_across_replicas(self) -> None:
        """Each replica's batch norm statistics followed its own batches; at each epoch's end they
        become their mean over the replicas (as Keras reads such variables under a strategy), so
        validation, evaluate and get_weights see the same model on every rank. One all-reduce per
        epoch, only for a module with floating-point buffers."""
        if self.communicator is None:
            return
        buffers = running_statistics(self.module, self.statistics, floating_only=True)
        if not buffers:
            return
        with torch.no_grad():
            flat = torch.cat([b.reshape(-1) for b in buffers])
            self.communicator.all_reduce_sum_(flat)  # sync point: every replica waits here
            flat /= self.plan.world_size
            offset = 0
            for b in buffers:
                b.copy_(flat[offset:offset + b.numel()].view_as(b))
                offset += b.numel()

    def _start_replicas_equal(self) -> None:
        """Every replica starts from rank 0's weights, as DDP does, whatever each one initialised."""
        if self.communicator is None:
            return
        with torch.no_grad():
            for tensor in [*self.module.parameters(), *self.module.buffers()]:
                self.communicator.broadcast_(tensor.detach())

    # --- the measured plan and the executor ---------------------------------------------------

    def _settle_plan(self, data: _PreparedData, batch_size, epochs: int, hooks: CallbackList):
        """Batch size, threads, precision and compile: measured on this model where asked ("auto"),
        or taken from the plan cache where this model was measured before on this machine."""
        cache_key = autotune.cache_key(self, data, batch_size, epochs)
        cached = autotune.apply_cached_choices(self, cache_key)
        if batch_size == "auto":
            batch_size = (self.plan.batch_size if cached and self.plan.batch_size
                          else autotune.auto_batch_size(self, data, hooks))
        step, metrics = self._make_step(data, batch_size, hooks)
        self._tune_threads(step, data.train, batch_size, metrics)
        step, metrics = autotune.settle_precision(self, data, batch_size, hooks, step, metrics)
        step, metrics = autotune.settle_compile(self, data, batch_size, epochs, hooks, step, metrics)
        if not cached:  # an entry read back is kept as it was measured, its reasons unannotated
            autotune.store_choices(self, cache_key)
        return batch_size, step, metrics

    def _make_step(self, data: _PreparedData, batch_size: int, hooks: CallbackList):
        """The static executor where the model allows it (or the plan demands it), else autograd."""
        self._graphed = None
        reason = self._why_not_static(data)
        if self.requested_executor == "static" and reason is not None:
            raise ConfigError(f"executor='static' cannot train this model: {reason}. Use 'auto' or 'autograd'.")
        if reason is not None:
            self.plan = self.plan.with_choice("executor", "autograd", reason)
            for param in self.module.parameters():
                param.grad = None  # a static step leaves its last gradient; autograd would add onto it
            step = AutogradStep(self.module, self.loss, as_torch_optimizer(self.optimizer), penalty=self.penalty,
                                output_activation=self.output_activation, communicator=self.communicator,
                                precision=self.plan.precision, forward=self._compiled_forward())
            self._current_step = step
            if _defines_train_step(self):
                step.user_step = self._own_step_on(step)
            self._guard_step(step)
            return step, self._metric_set(data.output_shape)
        self.plan = self.plan.with_choice("executor", "static", "every layer and the loss have a known backward")
        step = StaticStep(self.module, self.loss, self.optimizer, batch_size=batch_size,
                          output_activation=self.output_activation, communicator=self.communicator)
        if self.plan.device.type == "cpu":
            self.plan = self.plan.with_reason("matmul", _matmul_reason(*step.products(batch_size)))
        self._guard_step(step)
        self._graphed = self._graph_steps(step, data, batch_size, hooks)
        metrics = DeferredMetricSet(self._resolve_metrics(data.output_shape), self.plan.device, loss=self.loss,
                                    output_activation=self.output_activation, rows=len(data.train),
                                    width=data.output_shape[1:], communicator=self.communicator)
        return step, metrics

    def _guard_step(self, step) -> None:
        if getattr(self, "_guard", None) is not None:
            step.guard_with(self._guard, step.optimizer if isinstance(step, AutogradStep) else self.optimizer)

    def _graph_steps(self, step, data: _PreparedData, batch_size: int, hooks: CallbackList):
        """Groups of static steps as CUDA graphs, where the device, the data and the callbacks allow."""
        steps_per_launch = graph_steps_per_launch(self.plan.device, len(data.train) // batch_size)
        reason = ("not asked for" if not self.plan.cuda_graph else "not a CUDA device" if steps_per_launch == 0
                  else self._why_each_step_needs_python(step, hooks))
        if reason is not None:
            if self.plan.device.type == "cuda":
                self.plan = self.plan.with_choice("cuda_graph", False, reason)
            return None
        self.plan = self.plan.with_choice("cuda_graph", True, f"{steps_per_launch} static steps per launch")
        return GraphedSteps(step, data.train, batch_size, steps_per_launch, self.module, self.optimizer)

    def _why_each_step_needs_python(self, step, hooks: CallbackList, native_loop: bool = False) -> str | None:
        """Why the steps cannot run many per call (a CUDA graph launch, the C++ loop), or ``None``.
        ``native_loop``: for the C++ loop, which sets Keras's Adam epsilon itself each step."""
        return ("not with replicas yet" if self.communicator is not None
                else "only the fused Adam/AdamW update runs many steps per call" if not step.update_is_capturable
                else "a learning-rate schedule sets the rate before every step"
                if getattr(self.optimizer, "schedule", None) is not None
                else "Keras's Adam epsilon is set before every step"
                if getattr(self.optimizer, "keras_epsilon", None) is not None and not native_loop
                else "a callback listens to every batch"
                if hooks.wants_train_batch_logs or hooks.wants_train_batch_begin
                else "checkpoints are saved between steps" if self._saver is not None
                else "on_nonfinite='skip_step' takes each skipped batch out of the metrics"
                if self._guard is not None and self._guard.skip_steps else None)

    def _choose_step_loop(self, step, hooks: CallbackList) -> None:
        """The C++ step loop (:mod:`hpctrain.engine.native`) for a static step on a CPU, where nothing
        must run between steps in Python; where it is not built yet, it is built after this fit."""
        self._native_steps = self._build_step_loop_after_fit = False
        if not isinstance(step, StaticStep) or self.plan.device.type != "cpu":
            return
        reason = self._why_each_step_needs_python(step, hooks, native_loop=True) or step.why_not_native()
        if reason is None and native.step_loop() is None:
            reason = native.status()
            self._build_step_loop_after_fit = True
        self._native_steps = reason is None
        self.plan = self.plan.with_reason("step_loop", "C++ (each run of gathered batches is one call)"
                                          if reason is None else f"Python ({reason})")

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

    def _thread_retuner(self, data) -> "tuning.ThreadRetuner | None":
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
        self.plan = self.plan.with_choice("threads", threads, f"re-measured while training ({where}): {timings}")

    def _compiled_forward(self):
        """torch.compile of the module where the plan says so; built once, it keeps its compiled code."""
        if self.plan.compile is not True:
            return None
        if self._compiled is None:
            self._compiled = torch.compile(self.module)
        return self._compiled

    def _why_not_static(self, data: _PreparedData) -> str | None:
        if _defines_train_step(self):
            return "the trainer defines its own train_step"
        if self.requested_executor == "autograd":
            # The reason whoever chose it gave (run_eagerly, an optimizer that needs autograd, ...).
            given = dict(self.plan.reasons).get("executor", "")
            return given.removeprefix("autograd (").removesuffix(")") or "autograd was asked for"
        if self.plan.precision == "bfloat16":
            return "bfloat16 autocast runs under autograd"
        if self.plan.compile is True:
            return "torch.compile compiles the module's forward and its autograd backward"
        if isinstance(data.train, LoaderData):
            return "batches come from a DataLoader"
        if self.penalty is not None and not getattr(self.penalty, "described_by_static_layers", False):
            return "a custom penalty function needs autograd"
        if fit_options.has_weights(data.train):
            return "sample or class weights scale each sample's loss"
        if not isinstance(data.train.x, torch.Tensor) or data.train.x.dim() != 2:
            return "the inputs are not a matrix of rows; Dense over more axes runs under autograd"
        return why_not_static(self.module, self.loss)

    # --- preparation --------------------------------------------------------------------------

    def _apply_plan(self) -> None:
        # Thread count is process-wide in PyTorch; set it once per call, not per step.
        if self.plan.device.type == "cpu" and torch.get_num_threads() != self.plan.threads:
            torch.set_num_threads(self.plan.threads)
        if self.plan.keep_host_memory:
            host_memory.keep_freed_blocks()

    def _prepare_fit_data(self, x, y, validation_split, validation_data, sample_weight=None,
                          class_weight=None) -> _PreparedData:
        if _is_loader(x):
            if self.communicator is not None:
                raise ConfigError("with several replicas, pass arrays or tensors (each replica takes its share of "
                                  "every global batch); a DataLoader would give every replica every batch.")
            if validation_split:
                raise ConfigError("validation_split needs arrays; with a DataLoader pass validation_data instead.")
            if sample_weight is not None or class_weight is not None:
                raise ConfigError("with a DataLoader, give sample weights as a third item of each batch "
                                  "(x, y, sample_weight); sample_weight and class_weight need arrays.")
            loader = LoaderData(x, self.plan.device)
            output_shape = self._loader_output_shape(loader)
            return self._with_loader_targets(_PreparedData(loader, self._prepare_validation(validation_data),
                                                           output_shape))
        train, output_shape = self._prepare_labelled(x, y, name="x", sample_weight=sample_weight)
        held_out = self._prepare_validation(validation_data)
        if validation_split and validation_data is None:  # as in Keras, validation_data wins
            train, held_out = train.split_tail(validation_split)
            if len(train) == 0 or len(held_out) == 0:
                raise InputError(
                    f"validation_split={validation_split} leaves {len(train)} training and {len(held_out)} "
                    "validation samples; both need at least one. Use more data or another split."
                )
        if class_weight is not None:  # as in Keras, for the training rows only
            train = ResidentData(train.x, fit_options.with_class_weight(train.y, class_weight))
        return self._with_loader_targets(_PreparedData(train, held_out, output_shape))

    def _with_loader_targets(self, data: "_PreparedData") -> "_PreparedData":
        """Loaders' labels checked and converted by the loss batch by batch, as arrays' are once."""
        for part in (data.train, data.validation):
            if isinstance(part, LoaderData):
                part.prepare_targets = functools.partial(self.loss.prepare_targets, output_shape=data.output_shape)
        return data

    def _prepare_validation(self, validation_data):
        if validation_data is None:
            return None
        if _is_loader(validation_data):
            return LoaderData(validation_data, self.plan.device)
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise InputError(
                f"validation_data must be a tuple (x_val, y_val) or (x_val, y_val, sample_weight_val); got "
                f"{type(validation_data).__name__}."
            )
        weights = validation_data[2] if len(validation_data) == 3 else None
        data, _ = self._prepare_labelled(validation_data[0], validation_data[1], name="x_val", y_name="y_val",
                                         sample_weight=weights, weight_name="sample_weight_val")
        return data

    def _prepare_labelled(self, x, y, *, name: str, y_name: str = "y", sample_weight=None,
                          weight_name: str = "sample_weight") -> tuple[ResidentData, tuple[int, ...]]:
        if y is None:
            raise InputError(f"{y_name} is missing: training and evaluation need a label for each sample of {name}.")
        validation.check_not_several_inputs(x, y, name=name)
        inputs = self._inputs_tensor(x, name=name)
        targets = to_tensor(y, name=y_name, device=self.plan.device)
        validation.check_same_length(inputs, targets, x_name=name, y_name=y_name)
        validation.check_finite(targets, name=y_name)
        output_shape = validation.probe_output_shape(self.module, inputs, name=name)
        targets = self.loss.prepare_targets(targets, output_shape)
        targets = fit_options.with_sample_weight(targets, sample_weight, rows=inputs.shape[0], name=weight_name)
        return ResidentData(inputs, targets), output_shape

    def _inputs_tensor(self, x, *, name: str) -> torch.Tensor:
        inputs = to_tensor(x, name=name, device=self.plan.device)
        if inputs.shape[0] == 0:
            raise InputError(f"{name} has no samples (shape {tuple(inputs.shape)}); give at least one row.")
        validation.check_finite(inputs, name=name)
        return inputs

    def _loader_output_shape(self, loader: LoaderData) -> tuple[int, ...]:
        xb, _ = native_checks.first_batch(loader)
        return validation.probe_output_shape(self.module, xb)

    def _output_shape_of(self, data) -> tuple[int, ...]:
        if isinstance(data, LoaderData):
            return self._loader_output_shape(data)
        return validation.probe_output_shape(self.module, data.x)

    def _resolve_metrics(self, output_shape) -> list[Metric]:
        return [resolve_metric(spec, self.loss, output_shape) for spec in self.metric_specs]

    def _metric_set(self, output_shape, prefix: str = "") -> MetricSet:
        return MetricSet(self._resolve_metrics(output_shape), self.plan.device, prefix=prefix,
                         communicator=self.communicator)

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.output_activation is None else self.output_activation(logits)


class _Shuffler:
    """One permutation of row indices per epoch, from a generator seeded by torch's global RNG.

    Seeding from the global RNG makes ``set_random_seed`` fix the shuffle order too.
    """

    def __init__(self, device: torch.device, communicator=None):
        seed = torch.randint(0, 2**62, (1,))
        if communicator is not None:  # every replica walks rank 0's order
            seed = communicator.broadcast_(seed.to(communicator.device)).cpu()
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(int(seed))
        self.device = device

    def permutation(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.generator, device=self.device)


def _matmul_reason(onednn: int, products: int) -> str:
    if onednn:
        return (f"oneDNN for {onednn} of the step's {products} products (those of >= {ONEDNN_MIN_MACS:,} "
                "multiply-adds, where it beat MKL), MKL's torch.mm for the rest")
    return f"MKL's torch.mm for all {products} products (oneDNN pays from {ONEDNN_MIN_MACS:,} multiply-adds)"


def _build_optimizer(optimizer, module: torch.nn.Module, device: torch.device):
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if isinstance(optimizer, str):
        return build_optimizer(optimizer_class_by_name(optimizer), module.parameters(), device)
    if callable(optimizer):
        return optimizer(module.parameters(), device)
    raise ConfigError(
        f"optimizer must be a torch.optim.Optimizer, a name such as 'adam', or a factory fn(params, device); "
        f"got {type(optimizer).__name__}."
    )


def _unprefixed(logs: dict, prefix: str) -> dict:
    """Validation's logs as the test hooks see them: "loss", not "val_loss", as in Keras."""
    return {name.removeprefix(prefix): value for name, value in logs.items()} if prefix else logs


def _is_loader(data) -> bool:
    return isinstance(data, torch.utils.data.DataLoader)


def _steps_per_epoch(data, batch_size: int) -> int | None:
    if isinstance(data, LoaderData):
        return data.steps
    return -(-len(data) // batch_size)


def _defines_train_step(trainer) -> bool:
    return type(trainer).train_step is not Trainer.train_step


def _resolve_verbose(verbose) -> int:
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


__all__ = ["Trainer", "Callback"]
