"""Which step and which executor a ``fit`` trains with, and why: each choice goes to the plan
(``plan.explain()``).

:func:`make_step` builds the step (the static one where the model allows it, else autograd); the
measuring trials of :mod:`hpctrain.engine.autotune` build and time such steps. Once the plan is
settled, :func:`choose_executor` picks how the steps run: a CUDA graph, the C++ step loop, or a
Python call per step.
"""

from __future__ import annotations

import torch

from hpctrain.engine import fit_options, native
from hpctrain.engine.cuda_graph import GraphedSteps, graph_steps_per_launch
from hpctrain.engine.data import LoaderData
from hpctrain.engine.executors.autograd import AutogradExecutor
from hpctrain.engine.executors.base import Executor
from hpctrain.engine.executors.cuda_graph import CudaGraphExecutor
from hpctrain.engine.executors.native_loop import NativeLoopExecutor
from hpctrain.engine.executors.static import StaticExecutor
from hpctrain.engine.metrics import DeferredMetricSet
from hpctrain.engine.optim import as_torch_optimizer
from hpctrain.engine.static_step import StaticStep, why_not_static as why_layers_not_static
from hpctrain.engine.step import AutogradStep
from hpctrain.errors import ConfigError
from hpctrain.hardware.gemm import backend_reason


def make_step(trainer, data, batch_size: int, hooks):
    """``(step, metrics)``: the static step where the model allows it (or the plan demands it),
    else autograd; with the static step, the CUDA graph of its steps where that is chosen
    (kept on ``trainer._graphed`` for :func:`choose_executor`)."""
    trainer._graphed = None
    reason = why_not_static(trainer, data)
    if trainer.requested_executor == "static" and reason is not None:
        raise ConfigError(f"executor='static' cannot train this model: {reason}. Use 'auto' or 'autograd'.")
    if reason is not None:
        return _autograd_step(trainer, data, reason)
    trainer.plan = trainer.plan.with_choice("executor", "static", "every layer and the loss have a known backward")
    if data.train.x.dim() > 2:  # the model's first layer flattens each row: done once, as a view
        data.train = data.train.with_rows_flattened()
    step = StaticStep(trainer.module, trainer.loss, trainer.optimizer, batch_size=batch_size,
                      output_activation=trainer.output_activation, communicator=trainer.communicator)
    if trainer.plan.device.type == "cpu":
        trainer.plan = trainer.plan.with_reason("matmul", matmul_reason(*step.products(batch_size)))
    _guard_step(trainer, step)
    trainer._graphed = _graph_steps(trainer, step, data, batch_size, hooks)
    metrics = DeferredMetricSet(trainer._resolve_metrics(data.output_shape), trainer.plan.device, loss=trainer.loss,
                                output_activation=trainer.output_activation, rows=len(data.train),
                                width=data.output_shape[1:], communicator=trainer.communicator)
    return step, metrics


def _autograd_step(trainer, data, reason: str):
    trainer.plan = trainer.plan.with_choice("executor", "autograd", reason)
    for param in trainer.module.parameters():
        param.grad = None  # a static step leaves its last gradient; autograd would add onto it
    step = AutogradStep(trainer.module, trainer.loss, as_torch_optimizer(trainer.optimizer), penalty=trainer.penalty,
                        output_activation=trainer.output_activation, communicator=trainer.communicator,
                        precision=trainer.plan.precision, forward=trainer._compiled_forward())
    trainer._current_step = step
    if defines_train_step(trainer):
        step.user_step = trainer._own_step_on(step)
    _guard_step(trainer, step)
    return step, trainer._metric_set(data.output_shape)


def _guard_step(trainer, step) -> None:
    guard = trainer._guard
    if guard is not None:
        step.guard_with(guard, step.optimizer if isinstance(step, AutogradStep) else trainer.optimizer)


def choose_executor(trainer, step, metrics, hooks) -> Executor:
    """How the settled ``step`` runs: its CUDA graph where one was made, the C++ loop for a static
    step on a CPU where nothing must run in Python between steps, else one Python call per step."""
    if trainer._graphed is not None:
        return CudaGraphExecutor(step, metrics, trainer._graphed)
    native_loop, build_after_fit = _choose_step_loop(trainer, step, hooks)
    if native_loop:
        return NativeLoopExecutor(step, metrics)
    if isinstance(getattr(step, "step", step), StaticStep):  # the guard's SkippingStep wraps a step
        return StaticExecutor(step, metrics, build_step_loop_after_fit=build_after_fit)
    return AutogradExecutor(step, metrics)


def _choose_step_loop(trainer, step, hooks) -> tuple[bool, bool]:
    """Whether the C++ loop runs the steps, and whether it is to be built after this fit (it would
    have run them but is not built yet)."""
    if not isinstance(step, StaticStep) or trainer.plan.device.type != "cpu":
        return False, False
    reason = why_each_step_needs_python(trainer, step, hooks, native_loop=True) or step.why_not_native()
    build_after_fit = reason is None and native.step_loop() is None
    if build_after_fit:
        reason = native.status()
    trainer.plan = trainer.plan.with_reason("step_loop", "C++ (each run of gathered batches is one call)"
                                            if reason is None else f"Python ({reason})")
    return reason is None, build_after_fit


def _graph_steps(trainer, step, data, batch_size: int, hooks):
    """Groups of static steps as CUDA graphs, where the device, the data and the callbacks allow."""
    steps_per_launch = graph_steps_per_launch(trainer.plan.device, len(data.train) // batch_size)
    reason = ("not asked for" if not trainer.plan.cuda_graph else "not a CUDA device" if steps_per_launch == 0
              else why_each_step_needs_python(trainer, step, hooks))
    if reason is not None:
        if trainer.plan.device.type == "cuda":
            trainer.plan = trainer.plan.with_choice("cuda_graph", False, reason)
        return None
    trainer.plan = trainer.plan.with_choice("cuda_graph", True, f"{steps_per_launch} static steps per launch")
    return GraphedSteps(step, data.train, batch_size, steps_per_launch, trainer.module, trainer.optimizer)


def why_each_step_needs_python(trainer, step, hooks, native_loop: bool = False) -> str | None:
    """Why the steps cannot run many per call (a CUDA graph launch, the C++ loop), or ``None``.
    ``native_loop``: for the C++ loop, which sets Keras's Adam epsilon itself each step."""
    optimizer, guard = trainer.optimizer, trainer._guard
    return ("not with replicas yet" if trainer.communicator is not None
            else "only the fused Adam/AdamW update runs many steps per call" if not step.update_is_capturable
            else "a learning-rate schedule sets the rate before every step"
            if getattr(optimizer, "schedule", None) is not None
            else "Keras's Adam epsilon is set before every step"
            if getattr(optimizer, "keras_epsilon", None) is not None and not native_loop
            else "a callback listens to every batch"
            if hooks.wants_train_batch_logs or hooks.wants_train_batch_begin
            else "checkpoints are saved between steps" if trainer._saver is not None
            else "on_nonfinite='skip_step' takes each skipped batch out of the metrics"
            if guard is not None and guard.skip_steps else None)


def why_not_static(trainer, data) -> str | None:
    if defines_train_step(trainer):
        return "the trainer defines its own train_step"
    if trainer.requested_executor == "autograd":
        # The reason whoever chose it gave (run_eagerly, an optimizer that needs autograd, ...).
        given = dict(trainer.plan.reasons).get("executor", "")
        return given.removeprefix("autograd (").removesuffix(")") or "autograd was asked for"
    if trainer.plan.precision == "bfloat16":
        return "bfloat16 autocast runs under autograd"
    if trainer.plan.compile is True:
        return "torch.compile compiles the module's forward and its autograd backward"
    if isinstance(data.train, LoaderData):
        return "batches come from a DataLoader"
    if trainer.penalty is not None and not getattr(trainer.penalty, "described_by_static_layers", False):
        return "a custom penalty function needs autograd"
    if fit_options.has_weights(data.train):
        return "sample or class weights scale each sample's loss"
    # The layers' reason first: it names the layer (a convolution), where the input's shape
    # would only say that images are not rows.
    reason = why_layers_not_static(trainer.module, trainer.loss)
    if reason is None and (not isinstance(data.train.x, torch.Tensor)
                           or data.train.x.dim() != 2 and not _flattens_rows(trainer.module)):
        return "the inputs are not a matrix of rows; Dense over more axes runs under autograd"
    return reason


def _flattens_rows(module) -> bool:
    """Whether the module's first layer only flattens each input row (a Keras ``Flatten``)."""
    return bool(getattr(module, "flattens_rows", lambda: False)())


def defines_train_step(trainer) -> bool:
    """Whether the trainer's class overrides ``train_step`` (the phases are then the user's)."""
    from hpctrain.engine.trainer import Trainer  # the class this module's choices are made for

    return type(trainer).train_step is not Trainer.train_step


def matmul_reason(onednn: int, products: int) -> str:
    return backend_reason(onednn, products)
