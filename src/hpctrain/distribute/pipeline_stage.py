"""One process's stage of a pipeline: the part of the model it holds, its process groups, and
what the engine's :class:`~hpctrain.engine.trainer.Trainer` asks of it through the
:class:`~hpctrain.engine.model_parallel.ModelPart` hooks: its executor (:mod:`pipeline_executor`),
its share of each batch, evaluate's and predict's forward through every stage, and the weights
made equal across processes. The epoch loop, callbacks and History are the trainer's."""

from __future__ import annotations

import dataclasses
import itertools

import torch
import torch.distributed as dist

from hpctrain.distribute.communicator import Communicator
from hpctrain.distribute.partition import Split, input_shape_of
from hpctrain.distribute.pipeline_config import PipelineConfig, microbatches_for, refuse_checkpoints, refuse_skip_steps
from hpctrain.distribute.pipeline_executor import PipelineExecutor
from hpctrain.engine.data import ResidentData
from hpctrain.engine.inference import unprefixed
from hpctrain.engine.metrics import MetricSet, ModelOutput, resolve_metric
from hpctrain.engine.model_parallel import ModelPart
from hpctrain.engine.optim import as_torch_optimizer
from hpctrain.engine.trainer import Trainer, optimizer_for
from hpctrain.errors import ConfigError, InputError


@dataclasses.dataclass
class PipelineGroups:
    stage: int
    replica: int
    pipeline: object  # the process group of this replica's stages (None: the whole world)
    stage_replicas: Communicator | None  # this stage's replicas, for gradients and metrics
    world: Communicator


def make_groups(config: PipelineConfig, rank: int, device: torch.device, world: Communicator) -> PipelineGroups:
    stage, replica = config.stage_of(rank), config.replica_of(rank)
    pipeline, stage_replicas = None, None
    if config.data_parallel > 1:  # new_group is collective: every rank creates every group, in one order
        for d in range(config.data_parallel):
            group = dist.new_group([config.rank_of(s, d) for s in range(config.stages)])
            pipeline = group if d == replica else pipeline
        for s in range(config.stages):
            group = dist.new_group([config.rank_of(s, d) for d in range(config.data_parallel)])
            if s == stage:
                stage_replicas = Communicator(replica, config.data_parallel, world.local_world_size, device, group)
    return PipelineGroups(stage, replica, pipeline, stage_replicas, world)


class StageModule(torch.nn.Module):
    """Contiguous layers of the model (shared with it); the last stage may end on logits."""

    def __init__(self, layers: list[torch.nn.Module], logits_at_end: bool):
        super().__init__()
        self.layers = torch.nn.ModuleList(layers)
        self.logits_at_end = logits_at_end

    def forward(self, x):
        *body, last = self.layers
        for layer in body:
            x = layer(x)
        return last.pre_activation(x) if self.logits_at_end else last(x)


@dataclasses.dataclass(frozen=True)
class _Boundary:
    """The activation crossing between two stages, for one sample."""

    shape: tuple[int, ...]
    dtype: torch.dtype


class PipelineStage(ModelPart):
    """This process's stage of ``module``, trained by a plain :class:`Trainer` of the whole model
    (``self.trainer``) whose hooks it answers."""

    def __init__(self, module, *, layers, split: Split, config: PipelineConfig, groups: PipelineGroups, loss, optimizer,
                 metrics, output_activation, plan, logits_at_end: bool = False, sample_shape=None):
        stage_layers = [layers[i] for i in split.stage_ranges()[groups.stage]]
        self.config, self.groups, self.split = config, groups, split
        self.is_first, self.is_last = groups.stage == 0, groups.stage == config.stages - 1
        self.device = plan.device
        self.stage_module = StageModule(stage_layers, logits_at_end=self.is_last and logits_at_end)
        self.boundaries = _stage_boundaries(layers, split, module, sample_shape)  # probed where the model was built
        # The whole model stays where it was built; only this stage moves to the device.
        self.stage_module.to(plan.device)
        self.stage_tensors = [[t for i in layers_of for t in (*layers[i].parameters(), *layers[i].buffers())]
                              for layers_of in split.stage_ranges()]
        self.optimizer = self._stage_optimizer(optimizer, module)
        self._schedules: dict = {}
        self._global_rows = 1
        stage_optimizer = self.optimizer  # the trainer takes this stage's, built above, as its optimizer
        self.trainer = Trainer(module, loss=loss, optimizer=lambda params, device: stage_optimizer, metrics=metrics,
                               output_activation=output_activation, plan=plan, model_parallel=self)

    # --- set-up --------------------------------------------------------------------------------

    def _stage_optimizer(self, optimizer, module):
        """An optimizer over this stage's weights, continuing any state the model's optimizer holds."""
        if isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError("a pipeline builds one optimizer per stage: pass a name ('adam'), a Keras optimizer or "
                              "a factory fn(params, device), not a torch.optim.Optimizer instance.")
        if not list(self.stage_module.parameters()):
            return None  # a stage of parameter-free layers (an activation) has nothing to update
        carried = optimizer.state_by_position() if hasattr(optimizer, "state_by_position") else []
        factory = optimizer.build if hasattr(optimizer, "build") else optimizer
        built = optimizer_for(factory, self.stage_module, self.device)
        positions = {id(p): i for i, p in enumerate(module.parameters())}
        mine = [positions[id(p)] for p in self.stage_module.parameters()]
        if carried and len(carried) == len(positions) and hasattr(optimizer, "load_state_by_position"):
            optimizer.load_state_by_position([carried[i] for i in mine])
        return built

    def schedule(self, rows: int, training: bool):
        """The stage and schedule for batches of ``rows`` (buffers are sized per shape, so one each)."""
        key = (rows, training)
        if key not in self._schedules:
            # Imported here: torch.distributed.pipelining takes seconds to import, paid only by pipelines.
            from torch.distributed.pipelining import PipelineStage as TorchStage
            from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe

            microbatches = microbatches_for(rows, self.config.microbatches)
            stage = TorchStage(self.stage_module, self.groups.stage, self.config.stages, self.device,
                               input_args=self._example(self.groups.stage, rows // microbatches, training),
                               output_args=self._example(self.groups.stage + 1, rows // microbatches, training),
                               group=self.groups.pipeline)
            # 1F1B needs a micro-batch per stage; an uneven last batch with fewer runs GPipe (the same sums).
            one_f_one_b = self.config.schedule == "1f1b" and microbatches >= self.config.stages
            kind = Schedule1F1B if one_f_one_b else ScheduleGPipe
            self._schedules[key] = kind(stage, microbatches, loss_fn=self._microbatch_loss if training else None,
                                        scale_grads=False)
        return self._schedules[key]

    def _example(self, boundary: int, rows: int, training: bool) -> torch.Tensor:
        meta = self.boundaries[boundary]
        return torch.zeros((rows, *meta.shape), dtype=meta.dtype, device=self.device,
                           requires_grad=training and boundary > 0 and meta.dtype.is_floating_point)

    def _microbatch_loss(self, output, target):
        # Weighted by the micro-batch's share of the global batch: the sum over micro-batches and
        # replicas is the mean loss over the global batch (gradients are not rescaled after).
        return self.trainer.loss(output, target) * (output.shape[0] / self._global_rows)

    def metric_set(self, output_shape, prefix: str = "") -> MetricSet:
        """Only the last stage has outputs; its replicas sum their totals."""
        trainer = self.trainer
        metrics = [resolve_metric(spec, trainer.loss, output_shape) for spec in trainer.metric_specs]
        return MetricSet(metrics, self.device, prefix=prefix, communicator=self.groups.stage_replicas)

    # --- pipeline passes -----------------------------------------------------------------------

    def train_through(self, x: torch.Tensor, y: torch.Tensor, global_rows: int) -> torch.Tensor | None:
        """Forward and backward of one replica's share of a global batch through every stage, by
        micro-batches; the output on the last stage, ``None`` elsewhere."""
        self._global_rows = global_rows
        return self.schedule(x.shape[0], training=True).step(*([x] if self.is_first else []),
                                                               target=y if self.is_last else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor | None:
        """Forward through every stage; the output on the last stage, ``None`` elsewhere."""
        self.stage_module.eval()
        schedule = self.schedule(len(x), training=False)
        with torch.no_grad():
            return schedule.step(*([x] if self.is_first else []))

    def _empty_output(self, rows: int) -> torch.Tensor:
        meta = self.boundaries[-1]
        return torch.zeros((rows, *meta.shape), dtype=meta.dtype, device=self.device)

    def shared_results(self, metrics: MetricSet) -> dict[str, float]:
        """The last stage's results (summed over its replicas), the same on every rank."""
        logs = [metrics.results() if self.is_last else None]
        dist.broadcast_object_list(logs, src=self.config.rank_of(self.config.stages - 1, 0))  # sync point
        return logs[0]

    # --- the trainer's hooks (ModelPart) ---------------------------------------------------------

    @property
    def data_share(self) -> tuple[int, int]:
        return self.groups.replica, self.config.data_parallel

    def check_fit(self, *, on_nonfinite: str, checkpoint, callbacks, steps_per_epoch) -> None:
        refuse_skip_steps(on_nonfinite)
        refuse_checkpoints(checkpoint, callbacks)
        if steps_per_epoch is not None:
            raise ConfigError("steps_per_epoch is not supported with PipelineStrategy yet; every epoch is one "
                              "pass over the data. Leave steps_per_epoch out.")

    def check_labelled(self, *, sample_weight, weight_name: str) -> None:
        if sample_weight is not None:
            raise ConfigError(f"{weight_name} is not supported with PipelineStrategy yet; train without "
                              "sample or class weights, or use MirroredStrategy.")

    def output_shape(self, inputs: torch.Tensor, *, name: str) -> tuple[int, ...]:
        if tuple(inputs.shape[1:]) != self.boundaries[0].shape:
            raise InputError(f"{name} has samples shaped {tuple(inputs.shape[1:])}; the first stage expects "
                             f"{self.boundaries[0].shape}. Reshape {name}.")
        return (len(inputs), *self.boundaries[-1].shape)

    def settle_executor(self, data, batch_size):
        # Nothing is measured per stage: a trial step would have to run through every stage at once.
        if batch_size == "auto":
            raise ConfigError("batch_size='auto' is not supported with PipelineStrategy yet; give a number that "
                              f"divides into {self.config.data_parallel * self.config.microbatches} equal parts.")
        self.config.check_batch(batch_size)
        return batch_size, PipelineExecutor(self, self.metric_set(data.output_shape))

    def evaluate_logs(self, data, batch_size: int, *, prefix: str, output_shape, batches, hooks) -> dict[str, float]:
        """As the trainer's; callbacks get ``on_test_begin``/``on_test_end`` (no per-batch hooks:
        a batch's loss is known on the last stage only)."""
        if batches is not None:
            raise ConfigError("validation_steps is not supported with PipelineStrategy yet; leave it out.")
        if hooks is not None:
            hooks.call("on_test_begin", {})
        metrics = self.metric_set(output_shape or (len(data), *self.boundaries[-1].shape), prefix=prefix)
        loss, activation = self.trainer.loss, self.trainer.output_activation
        for xb, yb in data.shard(*self.data_share).batches(batch_size):
            output = self.forward(xb)
            if self.is_last:
                metrics.update(loss(output, yb), ModelOutput(output, activation), yb)
        logs = self.shared_results(metrics)
        if hooks is not None:
            hooks.call("on_test_end", unprefixed(logs, prefix))
        return logs

    def predict_rows(self, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
        share = ResidentData(inputs, None).shard(*self.data_share)
        outputs = [self.forward(xb) for xb, _ in share.batches(batch_size)]  # every stage runs every batch
        last = self.config.rank_of(self.config.stages - 1, 0)
        rows = torch.cat(outputs) if self.is_last and outputs else self._empty_output(0)
        if self.is_last and self.groups.stage_replicas is not None:
            rows = self.groups.stage_replicas.all_gather_rows(rows)  # the replicas' shares, in input order
        if self.trainer.plan.rank != last:
            rows = self._empty_output(len(inputs))
        self.groups.world.broadcast_(rows, source=last)  # every rank returns every row
        return rows

    def start_equal(self) -> None:
        """Every process starts from rank 0's weights, whatever each one initialised."""
        self._broadcast_weights([0] * self.config.stages)

    def after_epoch(self) -> None:
        """Every process gets every stage's weights from that stage's first replica, so epoch-end
        callbacks (checkpoints, early stopping) see the whole model. Batch-norm statistics are not
        averaged across the world: a stage's live in its own processes."""
        self._broadcast_weights([self.config.rank_of(stage, 0) for stage in range(self.config.stages)])

    def _broadcast_weights(self, source_of_stage: list[int]) -> None:
        # One broadcast per tensor: a sync point per epoch, about as costly as one gradient all-reduce.
        with torch.no_grad():
            for source, tensors in zip(source_of_stage, self.stage_tensors):
                for tensor in tensors:
                    buffer = tensor.detach().to(self.device)
                    self.groups.world.broadcast_(buffer, source=source)
                    if buffer.data_ptr() != tensor.data_ptr():  # a device copy: bring it back
                        tensor.detach().copy_(buffer)

    def optimizer_state_by_position(self) -> list[dict]:
        """Each stage's optimizer state, concatenated in model order (a collective)."""
        state = as_torch_optimizer(self.optimizer).state if self.optimizer is not None else {}
        mine = [{k: v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v for k, v in state.get(p, {}).items()}
                for p in self.stage_module.parameters()]
        gathered = [None] * self.config.world_size
        dist.all_gather_object(gathered, mine if self.groups.replica == 0 else None)
        return list(itertools.chain.from_iterable(part for part in gathered if part is not None))


def _stage_boundaries(layers, split: Split, module, sample_shape=None) -> list[_Boundary]:
    """Per-sample shape and dtype entering each stage, and leaving the last (one probe row)."""
    first = next(iter(module.parameters()), None)
    shape = tuple(sample_shape) if sample_shape is not None else input_shape_of(layers)
    if shape is None:
        raise ConfigError("the pipeline needs the model's input shape: give the first layer input_shape=... "
                          "(or build the model) before fit.")
    device = first.device if first is not None else torch.device("cpu")
    x = torch.zeros((1, *shape), device=device)
    boundaries = [_Boundary(tuple(shape), x.dtype)]
    training = [layer.training for layer in layers]
    try:
        with torch.no_grad():
            for stage_range in split.stage_ranges():
                for i in stage_range:
                    layers[i].eval()  # no batch-norm statistics updated by the probe
                    x = layers[i](x)
                boundaries.append(_Boundary(tuple(x.shape[1:]), x.dtype))
    finally:
        for layer, was_training in zip(layers, training):
            layer.train(was_training)
    return boundaries
