"""The native API and the engine under the Keras front end: ``Trainer.fit/evaluate/predict``.

``fit`` prepares the data, settles the plan, chooses the executor (:mod:`hpctrain.engine.executors`)
and runs the epochs of a :class:`~hpctrain.engine.fit_session.FitSession`. Everything about the
hardware arrives in one :class:`~hpctrain.hardware.Plan`; the trainer applies it and never
re-detects anything.
"""

from __future__ import annotations

import contextlib
import gc
import os

import numpy as np
import torch

from hpctrain.engine import autotune, fit_options, native_checks, tuning
from hpctrain.engine.callbacks import Callback, CallbackList, History
from hpctrain.engine.checkpoint import CheckpointConfig
from hpctrain.engine.data import LoaderData
from hpctrain.engine.executors.choice import choose_executor, make_step
from hpctrain.engine.fit_session import FitSession, FitSettings
from hpctrain.engine.guard import NonFiniteGuard, SkippingStep
from hpctrain.engine.inference import INFERENCE_BATCH, Inference
from hpctrain.engine.metrics import Metric, MetricSet, resolve_metric
from hpctrain.engine.optim import build_optimizer, optimizer_class_by_name, scheduled_rate
from hpctrain.engine.plan_settling import PlanSettling
from hpctrain.engine.preparation import PreparedData, steps_per_epoch
from hpctrain.engine.progress import Progress
from hpctrain.engine.run_state import FitRun, RunCheckpointer
from hpctrain.engine.statistics import check_statistics, running_statistics
from hpctrain.errors import ConfigError, InputError
from hpctrain.hardware import host_memory


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



class Trainer(PlanSettling, Inference):
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
    ``model_parallel``: this process's part of a model split across processes (a pipeline stage), a
    :class:`~hpctrain.engine.model_parallel.ModelPart`: it supplies the executor, the share of each
    batch, evaluate's and predict's forward, the weights' synchronisation and the input checks; the
    loop stays the trainer's. ``module`` is then the whole model, left where it is (the part moved
    its own layers to the device).
    """

    # Shuffles the rows of each epoch: ``fn(device, communicator)`` -> a ``permutation(n)`` provider.
    shuffler_factory = _Shuffler

    def __init__(self, module: torch.nn.Module, *, loss, optimizer, metrics=(), output_activation=None,
                 penalty=None, plan=None, inference_batch_size: int = INFERENCE_BATCH, statistics=None,
                 model_parallel=None):
        if plan is None:
            from hpctrain.hardware import make_plan

            plan = make_plan()
        self.plan = plan
        # The plan records the executor fit settles on; what was asked for decides what may be tried.
        self.requested_executor = plan.executor
        self.model_parallel = model_parallel
        self.module = module if model_parallel is not None else module.to(plan.device)
        self.loss = native_checks.resolve_loss(loss)
        self.optimizer = optimizer_for(optimizer, self.module, plan.device)
        self.metric_specs = list(metrics)
        self.output_activation = output_activation
        self.penalty = penalty
        self.inference_batch_size = inference_batch_size
        self.statistics = check_statistics(statistics)
        self._stop_training = False
        # A front end's model whose own ``stop_training`` callbacks set (Keras's model); None: this trainer.
        self.stop_source = None
        self.history = None
        self._graphed = None  # the CUDA graph of the last static step made, where one is chosen
        self._compiled = None
        self._session: FitSession | None = None  # the last fit's
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

    # --- what the current fit holds, as the checkpoints and trials around the trainer read it ---

    @property
    def _run(self) -> FitRun | None:
        return self._session.run if self._session is not None else None

    @property
    def _saver(self) -> RunCheckpointer | None:
        return self._session.saver if self._session is not None else None

    @property
    def _guard(self) -> NonFiniteGuard | None:
        return self._session.guard if self._session is not None else None

    @property
    def executor(self):
        """What ran the last ``fit``'s steps (an :class:`~hpctrain.engine.executors.base.Executor`: its
        ``name`` says which); ``None`` before a fit."""
        return self._session.executor if self._session is not None else None

    @property
    def _fit_batches(self):
        return self._session.fit_batches if self._session is not None else None

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
        if self.model_parallel is not None:
            self.model_parallel.check_fit(on_nonfinite=on_nonfinite, checkpoint=checkpoint, callbacks=callbacks,
                                          steps_per_epoch=steps_per_epoch)
        native_checks.check_trainable(self.module)
        settings = FitSettings.checked(
            batch_size=batch_size, epochs=epochs, verbose=verbose, validation_split=validation_split,
            steps_per_epoch=steps_per_epoch, validation_steps=validation_steps,
            validation_batch_size=validation_batch_size, validation_freq=validation_freq,
            on_nonfinite=on_nonfinite, rank=self.plan.rank)
        self._apply_plan()
        self._start_replicas_equal()
        data = self._prepare_fit_data(x, y, settings.validation_split, validation_data, sample_weight, class_weight)
        session = self._open_session(data, settings, callbacks, callback_model, checkpoint)
        self._settle_executor(session)
        self._lay_out_epochs(session, shuffle)
        with self.plan_held_still():  # settled: the same plan object until fit returns
            self._begin_training(session, callback_model, initial_epoch)
            with _objects_so_far_skipped_by_gc():
                logs = session.run_epochs()
            return self._finish_training(session, logs)

    def _open_session(self, data, settings: FitSettings, callbacks, callback_model, checkpoint) -> FitSession:
        """The callbacks (the History last), the checkpointer and the non-finite guard of this fit."""
        history = History()
        params = {"verbose": settings.verbose, "epochs": settings.epochs, "steps": None}
        hooks = CallbackList([*(callbacks or []), history], model=callback_model or self, params=params)
        self._session = session = FitSession(self, settings, data, hooks, history, callback_params=params)
        session.saver = self._checkpointer(checkpoint, hooks.callbacks, settings.steps_per_epoch)
        session.guard = NonFiniteGuard(self.plan.device, skip_steps=settings.skip_steps,
                                       statistics=running_statistics(self.module, self.statistics))
        return session

    def _settle_executor(self, session: FitSession) -> None:
        """The plan settled (batch size, threads, precision, compile), then the executor chosen once;
        a model split across processes supplies its part's executor instead."""
        if self.model_parallel is not None:
            session.batch_size, session.executor = self.model_parallel.settle_executor(session.data,
                                                                                       session.settings.batch_size)
            return
        batch_size, step, metrics = self._settle_plan(session.data, session.settings.batch_size,
                                                      session.settings.epochs, session.hooks)
        if session.settings.skip_steps:
            step = SkippingStep(step, session.guard)
        session.executor = choose_executor(self, step, metrics, session.hooks)
        session.batch_size = batch_size

    def _lay_out_epochs(self, session: FitSession, shuffle: bool) -> None:
        """Steps per epoch, the shuffle order, the running pass of ``steps_per_epoch``, validation's batches."""
        settings, train, batch_size = session.settings, session.data.train, session.batch_size
        session.steps = session.callback_params["steps"] = settings.steps_per_epoch or steps_per_epoch(train, batch_size)
        session.before_update = scheduled_rate(self.optimizer)
        self._retuner = session.retuner = self._thread_retuner(train)
        session.shuffler = shuffler = self.shuffler_factory(self.plan.device, self.communicator) if shuffle else None
        session.stream = None if settings.steps_per_epoch is None else fit_options.BatchStream(
            lambda: self._pass_batches(train, batch_size, shuffler), settings.steps_per_epoch,
            steps_per_epoch(train, batch_size))
        session.fit_batches = (train, batch_size) if session.stream is None else None
        session.validation_batches = self._validation_batches(
            session.data.validation, settings.validation_steps, settings.validation_batch_size or batch_size,
            per_batch=session.hooks.wants("on_test_batch_begin", "on_test_batch_end"))

    def _begin_training(self, session: FitSession, callback_model, initial_epoch: int) -> None:
        """``on_train_begin``, then the position to start from: a checkpoint's, or ``initial_epoch``."""
        self.stop_training = False
        session.hooks.call("on_train_begin", {})
        # Keras's BackupAndRestore, restoring in on_train_begin, sets the model's ``_initial_epoch``.
        initial_epoch = getattr(callback_model, "_initial_epoch", None) or initial_epoch
        saver = session.saver
        restored = saver.restore(**session.saver_args) if saver else None
        session.run = restored or FitRun(epoch=initial_epoch)
        if session.run.global_step:  # resumed: the schedule's clock continues from the restored update count
            session.before_update = scheduled_rate(self.optimizer)
        session.guard.count_updates_on_host(self.optimizer if session.before_update is not None else None)
        session.executor.prepare(session.step_context())

    def _finish_training(self, session: FitSession, logs: dict) -> History:
        session.hooks.call("on_train_end", logs)
        if session.saver is not None:
            session.saver.finish()
        session.executor.finish_fit()
        session.run = session.saver = None
        self.history = session.history
        return session.history

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

    # --- weights ------------------------------------------------------------------------------

    def get_weights(self) -> list[np.ndarray]:
        """Every tensor of the module's state in ``state_dict`` order: parameters and buffers (batch
        norm's running statistics), as Keras's list holds non-trainable weights too."""
        return [host_array(tensor) for tensor in self._state_tensors()]

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

    def _run_epoch(self, executor, data, batch_size, shuffler, metrics, hooks: CallbackList,
                   progress: Progress, stream=None) -> dict[str, float]:
        """One epoch's steps by the fit's executor; its logs."""
        self.module.train()
        executor.reset_metrics()
        executor.run(self._session.epoch_span(data, batch_size, shuffler, stream), progress)
        return executor.results()

    def _pass_batches(self, data, batch_size: int, shuffler):
        """The batches of one pass over the training data: shuffled, and this replica's share."""
        if isinstance(data, LoaderData):
            return data.batches()
        order = shuffler.permutation(len(data)) if shuffler else None
        share = self.data_share()
        if share is not None:
            return data.shard_batches(batch_size, *share, order=order)
        return data.batches(batch_size, order=order)

    def data_share(self) -> tuple[int, int] | None:
        """``(index, count)``: this process's share of every batch among the processes that share the
        data (a model split across processes: the replicas of its part); ``None``: it takes every batch."""
        if self.model_parallel is not None:
            return self.model_parallel.data_share
        return (self.plan.rank, self.plan.world_size) if self.communicator is not None else None

    def _sync_weights_after_epoch(self) -> None:
        """After an epoch's steps: each process's copy of the model made the same (see the two below)."""
        if self.model_parallel is not None:
            self.model_parallel.after_epoch()
        else:
            self._average_buffers_across_replicas()

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
        if self.model_parallel is not None:
            self.model_parallel.start_equal()
            return
        if self.communicator is None:
            return
        with torch.no_grad():
            for tensor in [*self.module.parameters(), *self.module.buffers()]:
                self.communicator.broadcast_(tensor.detach())

    # --- the measured plan and the executor ---------------------------------------------------

    def _settle_plan(self, data: PreparedData, batch_size, epochs: int, hooks: CallbackList):
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

    def _make_step(self, data: PreparedData, batch_size: int, hooks: CallbackList):
        """``(step, metrics)``: the static step where the model allows it, else autograd (see
        :func:`~hpctrain.engine.executors.choice.make_step`); measuring trials make theirs here too."""
        return make_step(self, data, batch_size, hooks)

    def _compiled_forward(self):
        """torch.compile of the module where the plan says so; built once, it keeps its compiled code."""
        if self.plan.compile is not True:
            return None
        if self._compiled is None:
            self._compiled = torch.compile(self.module)
        return self._compiled

    # --- preparation --------------------------------------------------------------------------

    def _apply_plan(self) -> None:
        # Thread count is process-wide in PyTorch; set it once per call, not per step.
        if self.plan.device.type == "cpu" and torch.get_num_threads() != self.plan.threads:
            torch.set_num_threads(self.plan.threads)
        if self.plan.keep_host_memory:
            host_memory.keep_freed_blocks()

    def _resolve_metrics(self, output_shape) -> list[Metric]:
        return [resolve_metric(spec, self.loss, output_shape) for spec in self.metric_specs]

    def _metric_set(self, output_shape, prefix: str = "") -> MetricSet:
        return MetricSet(self._resolve_metrics(output_shape), self.plan.device, prefix=prefix,
                         communicator=self.communicator)



def host_array(tensor: torch.Tensor) -> np.ndarray:
    """A host copy of ``tensor``; a DTensor (a parameter FSDP2 sharded) is gathered whole first, a
    collective every rank of its mesh must call, as each rank's ``get_weights`` does."""
    tensor = tensor.detach()
    if torch.distributed.is_available():
        from torch.distributed.tensor import DTensor

        if isinstance(tensor, DTensor):
            tensor = tensor.full_tensor()
    return tensor.cpu().numpy().copy()


def optimizer_for(optimizer, module: torch.nn.Module, device: torch.device):
    """The optimizer of ``module``'s parameters from what ``Trainer(optimizer=...)`` takes."""
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


__all__ = ["Trainer", "Callback"]
