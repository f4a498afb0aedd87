"""Pipeline parallelism: ``PipelineStrategy`` cuts a ``Sequential`` into contiguous stages, one
process each, and trains them with ``torch.distributed.pipelining``'s stages and schedules.

Rank ``r`` runs stage ``r % stages`` of pipeline replica ``r // stages``: activations flow
between the stages of one replica, gradients are summed across the replicas of one stage. Each
global batch is cut as data parallelism cuts it (a contiguous share per replica), then into
micro-batches; each micro-batch's loss is weighted by its share of the global batch, so the
summed gradient is that of the mean loss over the global batch, as in one process.

The layout and its refusals live in :mod:`pipeline_config`, one process's stage in
:mod:`pipeline_stage` (trained by a plain :class:`~hpctrain.engine.trainer.Trainer` through its
model-parallel hooks) and its steps in :mod:`pipeline_executor`; this module holds the strategy
that ties them to a model.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from hpctrain.distribute.partition import Split, input_shape_of, optimizer_slots, split_model, stack_layers
from hpctrain.distribute.pipeline_config import (SCHEDULES, PipelineConfig, microbatches_for, refuse_checkpoints,
                                                 refuse_penalty, refuse_skip_steps)
from hpctrain.distribute.pipeline_executor import PipelineExecutor
from hpctrain.distribute.pipeline_stage import PipelineStage, make_groups
from hpctrain.distribute.runtime import DEFAULT_TIMEOUT_SECONDS, GroupSpec
from hpctrain.distribute.strategy import Strategy, parse_device
from hpctrain.errors import ConfigError

__all__ = ["SCHEDULES", "PipelineConfig", "PipelineExecutor", "PipelineStage", "PipelineStrategy", "microbatches_for"]


class PipelineStrategy(Strategy):
    """Pipeline parallelism over ``stages`` processes (× ``data_parallel`` replicas of the pipeline).

    Started with ``python script.py``, ``fit`` spawns ``stages * data_parallel`` local processes;
    under a launcher each launched process is one stage of one replica.
    """

    pipelined = True

    def __init__(self, stages: int, microbatches: int, schedule: str = "1f1b", devices=None, cut_points=None,
                 data_parallel: int = 1, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS):
        self.config = PipelineConfig(stages=stages, microbatches=microbatches, schedule=str(schedule).lower(),
                                     data_parallel=data_parallel)
        parsed = [parse_device(d) for d in devices] if devices else [torch.device("cpu")] * self.config.world_size
        if len(parsed) != self.config.world_size:
            raise ConfigError(f"devices lists {len(parsed)} devices; {stages} stages × {data_parallel} replicas need "
                              f"{self.config.world_size}, one per process (stage s of replica d on "
                              "devices[d*stages+s]).")
        super().__init__(parsed, timeout_seconds=timeout_seconds)
        self.cut_points = None if cut_points is None else tuple(cut_points)
        if self.group is not None:
            self.config.check_world(self.group.world_size)
        self.model = None
        self._stack: tuple[list[torch.nn.Module], tuple[int, ...] | None] | None = None  # given at compile
        self._split: Split | None = None
        self._groups = None
        self.last_stage: PipelineStage | None = None  # this process's, as the last trainer() built it

    @property
    def num_replicas_in_sync(self) -> int:
        return self.config.data_parallel

    @property
    def spawns_locally(self) -> bool:
        return self.group is None

    def on_compile(self, model, layers=None, sample_shape=None) -> None:
        """``model`` was compiled in this scope. Its front end passes the model's ``layers`` in order (plain
        torch modules) and one input row's ``sample_shape``, where it knows them; without ``layers`` the
        model itself must be a ``torch.nn.Sequential``."""
        self.model, self._split = model, None
        self._stack = None if layers is None else (stack_layers(layers), None if sample_shape is None
                                                   else tuple(sample_shape))

    def layers_of(self, model) -> list[torch.nn.Module]:
        """``model``'s layer stack: as its front end gave it at compile, or a ``torch.nn.Sequential``'s own."""
        if self._stack is not None and model is self.model:
            return self._stack[0]
        return stack_layers(model)

    def sample_shape_of(self, model) -> tuple[int, ...] | None:
        if self._stack is not None and model is self.model and self._stack[1] is not None:
            return self._stack[1]
        return input_shape_of(self.layers_of(model))

    def split(self, model=None) -> Split:
        """Where the model is cut (measured once, then kept: every process must cut alike)."""
        model = model if model is not None else self.model
        if model is None:
            raise ConfigError("no model to split yet: compile a Sequential inside strategy.scope(), or pass it, "
                              "strategy.describe(model).")
        if self._split is None or self.model is not model:
            if self.model is not model:
                self.model, self._stack = model, None
            self._split = split_model(self.layers_of(model), self.config.stages, self.cut_points,
                                      sample_shape=self.sample_shape_of(model))
        return self._split

    def describe(self, model=None) -> str:
        """The cut points and each stage's parameters, memory and share of the time, as text."""
        split = self.split(model)
        c = self.config
        header = (f"PipelineStrategy: {c.stages} stages × {c.data_parallel} replica(s) = {c.world_size} processes, "
                  f"{c.microbatches} micro-batches per batch, schedule {c.schedule}")
        return split.describe(optimizer_slots=optimizer_slots(getattr(self.model, "optimizer", None)), header=header)

    def fit(self, model, fit_arguments: dict):
        """Train ``model`` in one spawned process per stage; the whole model and History come back."""
        from hpctrain.distribute.spawn import fit_in_replicas

        self.split(model)  # measured here once; the processes take this cut with them
        self.config.check_batch(fit_arguments["batch_size"])
        refuse_skip_steps(fit_arguments.get("on_nonfinite", "raise"))
        refuse_checkpoints(fit_arguments.get("checkpoint"), fit_arguments.get("callbacks"))
        if any(getattr(layer, "regularization_penalty", lambda: None)() is not None for layer in self.layers_of(model)):
            refuse_penalty()  # here, before any process starts, rather than in every stage
        return fit_in_replicas(model, self.devices, self.timeout_seconds, fit_arguments, strategy=self)

    def join_spawned_group(self, spec: GroupSpec) -> None:
        """In a spawned process: this strategy now lays out that process's stage."""
        self.group, self._plan, self._groups = spec, None, None

    def _resolve_plan(self):
        plan = super()._resolve_plan()
        stage, replica = self.config.stage_of(plan.rank), self.config.replica_of(plan.rank)
        return plan.with_choice("world_size", plan.world_size,
                                f"rank {plan.rank}: stage {stage} of {self.config.stages}, replica {replica} of "
                                f"{self.config.data_parallel}, started by {self.group.launcher}")

    def trainer(self, module, *, model=None, loss, optimizer, metrics=(), output_activation=None, penalty=None):
        """This process's stage of ``module`` (a ``Sequential``, or ``model``'s logits view of one)."""
        if penalty is not None:
            refuse_penalty()
        if self.spawns_locally:
            raise ConfigError(
                f"strategy.trainer(...) trains the stage of a launched process; start the script with hpctrain launch "
                f"--nproc-per-node={self.config.world_size}, or, from a plain start, compile a Sequential inside "
                "strategy.scope() and call fit (which spawns the stages).")
        model = model if model is not None else module
        plan = self.plan()
        if self._groups is None:
            self._groups = make_groups(self.config, plan.rank, plan.device, plan.communicator)
        split = self._agreed_split(model)
        stage = f"stage {self._groups.stage} of a {self.config.schedule} pipeline"
        plan = plan.with_choice("executor", "autograd", f"{stage}: its steps run by the pipeline schedule")
        plan = plan.with_choice("precision", "float32", f"{stage} runs float32")
        plan = plan.with_choice("compile", False, f"{stage} runs eagerly")
        # A module other than the model is the model's logits view: the last stage ends on logits.
        self.last_stage = PipelineStage(module, layers=self.layers_of(model), split=split, config=self.config,
                                        groups=self._groups, loss=loss, optimizer=optimizer, metrics=metrics,
                                        output_activation=output_activation, plan=plan,
                                        logits_at_end=module is not model, sample_shape=self.sample_shape_of(model))
        return self.last_stage.trainer

    @property
    def last_trainer(self):
        """The plain :class:`~hpctrain.engine.trainer.Trainer` of this process's stage, as the last
        :meth:`trainer` call made it (``None`` before one)."""
        return self.last_stage.trainer if self.last_stage is not None else None

    def optimizer_state_by_position(self) -> list[dict]:
        """Every stage's optimizer state after the last fit, in the model's parameter order (a collective)."""
        return self.last_stage.optimizer_state_by_position()

    def _agreed_split(self, model) -> Split:
        # Measured times differ between processes: rank 0's cut is everyone's.
        chosen = [self.split(model) if self.plan().rank == 0 else None]
        dist.broadcast_object_list(chosen, src=0)
        self._split = chosen[0]
        return chosen[0]

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_plan=None, _groups=None, last_stage=None)  # process-local: a spawned process makes its own
        return state
