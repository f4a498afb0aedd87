"""A Keras model on a ``PipelineStrategy``: its chain of layers, cut into stages by
``distribute.partition``, and a launched process's share of ``fit`` through the pipeline schedule.

Only a chain can be cut: a ``keras.Sequential``, or a functional model whose graph runs
Input → layer → layer … with one tensor between each pair. Distribute knows only torch modules;
each Keras layer (a ``torch.nn.Module`` on the torch backend) is passed wrapped, so that a stage
calls it with the stage's training mode.
"""

from __future__ import annotations

import keras
import torch

from hpctrain.distribute.pipeline_config import refuse_penalty
from hpctrain.errors import ConfigError
from hpctrain.keras import optimizer_map, translate
from hpctrain.keras.callback_bridge import adapt_callbacks

_WHAT_TO_DO = ("Express the model as a keras.Sequential or a functional chain (Input → layer → layer …, one "
               "tensor between layers), or train it with MirroredStrategy (data parallel), which takes any model.")


class KerasLayerCall(torch.nn.Module):
    """One Keras layer as a stage's torch module: ``layer(x, training=...)``. The layer's variables'
    ``.value`` are its torch Parameters, shared with the model (no copy)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        self.name = layer.name

    def forward(self, x):
        return self.layer(x, training=self.training)


def why_not_a_chain(model) -> str | None:
    """``None`` when the model is a chain of single-tensor layers, else why it is not one."""
    if isinstance(model, keras.Sequential):
        return None
    own_call = [c.__name__ for c in type(model).__mro__ if "call" in vars(c)
                and not c.__module__.startswith("keras.")]
    if own_call or not getattr(model, "inputs", None):
        return f"{type(model).__name__} is a subclassed model: its call() is code, not a graph of layers to cut"
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return "the functional model has several inputs or outputs"
    previous = model.inputs[0]
    for layer in _graph_layers(model):
        if not isinstance(layer.input, keras.KerasTensor) or layer.input is not previous:
            return (f"its graph branches: layer {layer.name!r} ({type(layer).__name__}) does not take the previous "
                    "layer's output alone")
        previous = layer.output
    if previous is not model.outputs[0]:
        return "its graph branches: the last layer's output is not the model's output"
    return None


def _graph_layers(model) -> list:
    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def pipeline_layers(model) -> list[KerasLayerCall]:
    """The model's layers in order, each a torch module a stage can hold; refuses what is not a chain."""
    reason = why_not_a_chain(model)
    if reason is not None:
        raise ConfigError(f"PipelineStrategy cuts a chain of layers into stages, but {reason}. {_WHAT_TO_DO}")
    return [KerasLayerCall(layer) for layer in _graph_layers(model)]


def sample_shape(model) -> tuple[int, ...]:
    return tuple(model.inputs[0].shape[1:])


def _stage_optimizer(model):
    """A factory for each stage's optimizer: the PyTorch kernel equal to Keras's update, over the
    stage's own weights only."""
    reason = optimizer_map.why_not_mapped(model.optimizer, model.trainable_variables)
    if reason is not None:
        raise ConfigError(f"PipelineStrategy builds each stage's optimizer as a PyTorch kernel equal to Keras's, but "
                          f"{reason}. Compile with keras.optimizers.Adam or SGD, or use MirroredStrategy.")

    def build(params, device):
        engine = optimizer_map.engine_optimizer(model.optimizer, [p for p in params if p.requires_grad], device)
        optimizer_map.load_into_engine(model.optimizer, engine, model.trainable_variables)  # a later fit continues
        return engine

    return build


def stage_trainer(model, strategy, optimizer):
    """This launched process's stage of ``model``: cut from its chain of layers, rank 0's cut for all."""
    layers = pipeline_layers(model)
    strategy.on_compile(model, layers=layers, sample_shape=sample_shape(model))
    config = model._hpctrain_compile
    loss = translate.engine_loss(config["loss"]) or translate.KerasLoss(config["loss"])
    return strategy.trainer(model, loss=loss, optimizer=optimizer,
                            metrics=translate.engine_metrics(config["metrics"]))


def check_pipelinable(model, strategy, arguments: dict) -> None:
    """What a pipelined fit of ``model`` refuses, raised before any process starts; the cut is
    measured here once, and the spawned processes take it with them."""
    layers = pipeline_layers(model)  # refused if it is not a chain
    if model.losses:  # the stages add no regularization or add_loss terms: refused, not dropped
        refuse_penalty()
    _stage_optimizer(model)
    batch_size = arguments.get("batch_size")
    strategy.config.check_batch(32 if batch_size is None else batch_size)
    strategy.on_compile(model, layers=layers, sample_shape=sample_shape(model))
    strategy.split(model)


def fit_stage(model, strategy, x, y, arguments: dict, callbacks):
    """Trains this process's stage; after it every process's variables hold the whole trained model
    (each stage's weights are broadcast at every epoch's end). The stage's trainer and its History."""
    pipeline_layers(model)  # refused if it is not a chain
    if model.losses:  # the stages add no regularization or add_loss terms: refused, not dropped
        refuse_penalty()
    optimizer = _stage_optimizer(model)
    trainer = stage_trainer(model, strategy, optimizer)
    batch_size = arguments.pop("batch_size")
    history = trainer.fit(x, y, batch_size=32 if batch_size is None else batch_size,
                          callbacks=adapt_callbacks(callbacks), callback_model=model, **arguments)
    _write_back_optimizer(model, strategy, history)
    return trainer, history


def _write_back_optimizer(model, strategy, history) -> None:
    """Every stage's moments and the update count into Keras's optimizer variables in every
    process, as Keras's fit leaves them: a saved model or a later fit continues from them."""
    states = strategy.optimizer_state_by_position()  # a collective: every process takes part
    params = [p for layer in pipeline_layers(model) for p in layer.parameters()]  # the stages' order
    updates = len(history.epoch) * int((history.params or {}).get("steps") or 0)
    optimizer_map.write_back_gathered(model.optimizer, params, states, updates)
