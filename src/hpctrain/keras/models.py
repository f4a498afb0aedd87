"""Keras models: ``Sequential`` (and the ``Model`` base with compile/fit/evaluate/predict).

A model is a ``torch.nn.Module`` whose training is delegated to the engine's ``Trainer``. When the
last layer ends in softmax (or sigmoid) and the loss is the matching cross-entropy, training runs
on the logits and the loss takes them directly, as Keras does on TensorFlow: it is cheaper and
never takes the log of a rounded-to-zero probability.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import torch

from hpctrain.arguments import is_whole_number
from hpctrain.engine import Trainer
from hpctrain.engine.trainer import INFERENCE_BATCH
from hpctrain.engine.data import Columns, as_numeric
from hpctrain.engine.metrics import ModelOutput  # noqa: F401  (re-exported for custom steps)
from hpctrain.errors import ConfigError, InputError, NotCompiledError
from hpctrain.hardware import make_plan
from hpctrain.keras import activations, losses as keras_losses, optimizers as keras_optimizers
from hpctrain.keras.layers_core import Embedding
from hpctrain.keras.layers import LAYERS, InputLayer, KerasTensor, Layer, _snake_case, unique_name
from hpctrain.keras.summary import summary_table

_FOLDABLE = {activations.softmax: "categorical", activations.sigmoid: "binary"}


class Model(Layer):
    """Keras's training surface over a module; subclasses define the layer graph.

    ``Model(inputs, outputs)`` makes a functional model; a subclass that defines ``call`` is a
    subclassed model (layers assigned as attributes are tracked, weights built on the first call).
    """

    def __new__(cls, *args, **kwargs):
        if cls is Model and (args or "inputs" in kwargs or "outputs" in kwargs):
            from hpctrain.keras.functional import Functional

            return super().__new__(Functional)
        return super().__new__(cls)

    def __init__(self, name=None, **kwargs):
        super().__init__(name=name or unique_name(self._default_name()), **kwargs)
        self.optimizer = None
        self._compiled = None
        self._trainer: Trainer | None = None
        self.history = None

    @classmethod
    def _default_name(cls) -> str:
        return "model" if cls is Model else _snake_case(cls.__name__)

    # --- compile ------------------------------------------------------------------------------

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None, weighted_metrics=None,
                run_eagerly=False, steps_per_execution=1, jit_compile="auto", auto_scale_loss=True, plan=None):
        """Keras's compile. ``run_eagerly=True`` trains with autograd instead of the static executor;
        ``plan`` (hpctrain's own) overrides the hardware plan, e.g. ``hpctrain.make_plan(threads=1)``."""
        if loss is None:
            raise ConfigError("compile needs a loss, e.g. loss='sparse_categorical_crossentropy'.")
        if weighted_metrics is not None:
            raise ConfigError("weighted_metrics is not supported yet; remove it.")
        loss, metrics = self._compile_loss_and_metrics(loss, loss_weights, metrics)
        self.optimizer = keras_optimizers.get(optimizer)
        from hpctrain.distribute import get_strategy

        if plan is not None and get_strategy() is not None:
            raise ConfigError("compile(plan=...) inside strategy.scope(): the strategy makes the plan of each "
                              "replica; compile outside the scope to pass a plan of your own.")
        # As in Keras, a model compiled inside strategy.scope() trains with that strategy.
        self._compiled = {"loss": loss, "metrics": metrics, "plan": plan,
                          "strategy": get_strategy(), "run_eagerly": bool(run_eagerly),
                          "jit_compile": _check_jit_compile(jit_compile)}
        if self._compiled["strategy"] is not None:
            self._compiled["strategy"].on_compile(self)
        self._trainer = None  # the next fit builds a trainer for the new settings

    def _compile_loss_and_metrics(self, loss, loss_weights, metrics):
        """The engine's loss and metric list (a model with several outputs has one loss per output)."""
        if loss_weights is not None:
            raise ConfigError("loss_weights weighs the losses of several outputs; this model has one output. "
                              "Remove loss_weights.")
        metrics = list(metrics or [])
        for metric in metrics:
            _check_metric_name(metric)
        return keras_losses.get(loss), metrics

    @property
    def metrics_names(self) -> list[str]:
        """``["loss", ...]`` then each compiled metric's name, in the order ``evaluate`` returns them."""
        if self._compiled is None:
            return []
        return ["loss", *(_metric_name(metric) for metric in self._compiled["metrics"])]

    @property
    def plan(self):
        """The hardware plan: after ``fit``, with the executor and thread count it settled on."""
        if self._trainer is not None:
            return self._trainer.plan
        return (self._compiled or {}).get("plan") or make_plan()

    @property
    def stop_training(self) -> bool:
        return self._trainer.stop_training if self._trainer is not None else False

    @stop_training.setter
    def stop_training(self, value: bool) -> None:
        if self._trainer is not None:
            self._trainer.stop_training = bool(value)

    # --- fit / evaluate / predict -------------------------------------------------------------

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, class_weight=None, sample_weight=None, initial_epoch=0,
            steps_per_epoch=None, validation_steps=None, validation_batch_size=None, validation_freq=1,
            on_nonfinite="raise"):
        """Keras's ``fit``; ``on_nonfinite="skip_step"`` skips steps with a NaN/Inf loss or gradient
        (see README, "Non-finite guard")."""
        x, y = self._model_inputs(x, "x"), self._model_targets(y, "y")
        validation_data = self._structured_validation(validation_data)
        arguments = dict(x=x, y=y, batch_size=32 if batch_size is None else batch_size, epochs=epochs,
                         verbose=verbose, callbacks=callbacks, validation_split=validation_split,
                         validation_data=validation_data, shuffle=shuffle, initial_epoch=initial_epoch,
                         sample_weight=sample_weight, class_weight=class_weight, steps_per_epoch=steps_per_epoch,
                         validation_steps=validation_steps, validation_batch_size=validation_batch_size,
                         validation_freq=validation_freq, on_nonfinite=on_nonfinite)
        strategy = (self._compiled or {}).get("strategy")
        if strategy is not None and strategy.spawns_locally:
            if any(isinstance(data, Columns) for data in (x, y)):
                raise ConfigError("a model with several inputs or outputs cannot train in spawned replicas yet; "
                                  "start the script with hpctrain launch, or train it in one process.")
            self._ready_trainer(x, "fit")  # builds the model and checks x's shape before any process starts
            self.history = strategy.fit(self, arguments)
            return self.history
        try:
            self.history = self._ready_trainer(x, "fit").fit(**arguments, callback_model=self)
        finally:
            self.train(False)  # model(x) after fit is inference, as in Keras
        return self.history

    def use_plan(self, plan) -> None:
        """Train with ``plan`` from now on (a replica spawned by a strategy gets its own)."""
        self._compiled.update(plan=plan, strategy=None)
        self._trainer = None

    def __getstate__(self):
        # A pickled model (sent to spawned replicas) carries weights and settings, not a trainer.
        state = super().__getstate__()
        state["_trainer"] = None
        return state

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None, steps=None,
                 callbacks=None, return_dict=False):
        _reject_unsupported(steps=steps)
        x, y = self._model_inputs(x, "x"), self._model_targets(y, "y")
        return self._ready_trainer(x, "evaluate").evaluate(x, y, batch_size=batch_size, verbose=verbose,
                                                          return_dict=return_dict, sample_weight=sample_weight,
                                                          callbacks=callbacks, callback_model=self)

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None) -> np.ndarray:
        _reject_unsupported(steps=steps)
        x = self._model_inputs(x, "x")
        self._build_from_data(x)
        trainer = self._trainer or self._inference_trainer()
        return self._model_outputs(trainer.predict(x, batch_size=batch_size, verbose=verbose, callbacks=callbacks,
                                                   callback_model=self))

    def _build_on(self, inputs) -> None:
        self._build_from_data(inputs)

    # --- data in the shapes the engine carries (a functional model may take several) -----------

    def _model_inputs(self, x, name: str):
        return self._float_features(_numeric_or_loader(x, name))

    def _float_features(self, x):
        """Integer or boolean features (uint8 pixels, counts) as float32, as Keras casts the inputs of
        its float32 layers: resident once in that form, so the static executor's products take
        them as they are. A model that looks integer ids up (Embedding) gets them unchanged."""
        if isinstance(x, Columns):
            return Columns(self._float_features(part) for part in x.parts)
        integral = (isinstance(x, np.ndarray) and x.dtype.kind in "biu"
                    or isinstance(x, torch.Tensor) and not x.is_floating_point() and not x.is_complex())
        if not integral or any(isinstance(module, _TAKES_IDS) for module in self.modules()):
            return x
        return x.astype(np.float32) if isinstance(x, np.ndarray) else x.to(torch.float32)

    def _model_targets(self, y, name: str):
        return y

    def _structured_validation(self, validation_data):
        if isinstance(validation_data, (list, tuple)) and len(validation_data) in (2, 3):
            x_val, *rest = validation_data
            return (self._model_inputs(x_val, "x_val"), *rest)
        return validation_data

    def _model_outputs(self, outputs):
        return outputs

    def _engine_module(self) -> torch.nn.Module:
        return self

    # --- subclassed models: call() and the layers assigned as attributes ------------------------

    @property
    def layers(self) -> list[Layer]:
        return _tracked_layers(self)

    def call(self, inputs, training=False):
        raise ConfigError(f"{type(self).__name__} defines no call(self, inputs, training=False); a subclassed "
                          "Model computes its outputs there.")

    def forward(self, inputs):
        if isinstance(inputs, torch.utils.data.DataLoader):
            raise ConfigError("a model is called on tensors or arrays, not on a DataLoader.")
        if isinstance(inputs, Columns):
            inputs = list(inputs.parts)
        if _takes_training(type(self)):
            return self.call(inputs, training=self.training)
        return self.call(inputs)

    def get_config(self) -> dict:
        raise ConfigError(f"{type(self).__name__} is a subclassed model: its architecture is Python code, which "
                          "model.save does not store. Use save_weights/load_weights, or build it as a Sequential "
                          "or functional model.")

    # --- weights ------------------------------------------------------------------------------

    def get_weights(self) -> list[np.ndarray]:
        return [w for layer in self.layers for w in layer.get_weights()]

    def set_weights(self, weights) -> None:
        weights = list(weights)
        expected = sum(len(layer.weights) for layer in self.layers)
        if len(weights) != expected:
            raise InputError(f"set_weights got {len(weights)} arrays; this model has {expected} weights "
                             "(see get_weights()).")
        for layer in self.layers:
            count = len(layer.weights)
            layer.set_weights(weights[:count])
            weights = weights[count:]

    def save_weights(self, filepath: str) -> None:
        from hpctrain.keras.saving import save_weights

        save_weights(self, filepath)

    def load_weights(self, filepath: str) -> None:
        from hpctrain.keras.saving import load_weights

        load_weights(self, filepath)

    def save(self, filepath: str) -> None:
        """Architecture and weights in one file (``load_model`` reads it back); no code inside."""
        from hpctrain.keras.saving import save_model

        save_model(self, str(filepath))

    def summary(self, print_fn=None, **kwargs) -> None:
        (print_fn or print)(summary_table(self))

    def count_params(self) -> int:
        return sum(layer.count_params() for layer in self.layers)

    def get_layer(self, name=None, index=None) -> Layer:
        """One of the model's layers, by name or by position in ``layers``."""
        layers = self.layers
        if index is not None:
            if not -len(layers) <= index < len(layers):
                raise InputError(f"get_layer(index={index}): {self.name} has {len(layers)} layers.")
            return layers[index]
        for layer in layers:
            if layer.name == name:
                return layer
        raise InputError(f"{self.name} has no layer named {name!r}; its layers are "
                         f"{', '.join(layer.name for layer in layers)}.")

    # --- plumbing to the engine ---------------------------------------------------------------

    def _ready_trainer(self, x, what: str) -> Trainer:
        if self._compiled is None:
            raise NotCompiledError(
                f"{what} was called before compile; call model.compile(optimizer=..., loss=..., metrics=[...]) first."
            )
        self._build_from_data(x)
        if self._trainer is None:
            self._trainer = self._make_trainer()
        return self._trainer

    def _make_trainer(self) -> Trainer:
        loss = self._compiled["loss"]
        module, output_activation = self._engine_module(), None
        folded = self._foldable_output_activation(loss)
        if folded is not None:
            module, output_activation, loss = _LogitsView(self), folded, loss.with_logits()
        plan = self._compiled["plan"]
        strategy = self._compiled["strategy"]
        if strategy is not None and strategy.pipelined and not strategy.spawns_locally:
            return strategy.trainer(module, model=self, loss=loss, optimizer=self.optimizer,
                                    metrics=self._compiled["metrics"], output_activation=output_activation,
                                    penalty=self._penalty_fn())
        if plan is None:
            in_this_process = strategy is None or strategy.spawns_locally  # spawned replicas train; the rest runs here
            plan = make_plan() if in_this_process else strategy.plan()
        if self._compiled["run_eagerly"]:
            plan = plan.with_choice("executor", "autograd", "run_eagerly=True")
        if self._compiled.get("jit_compile", "auto") != "auto":
            plan = plan.with_choice("compile", self._compiled["jit_compile"], "jit_compile in compile()")
        return Trainer(module, loss=loss, optimizer=self.optimizer.build, metrics=self._compiled["metrics"],
                       output_activation=output_activation, penalty=self._penalty_fn(), plan=plan,
                       inference_batch_size=inference_batch_size(self))

    def _inference_trainer(self) -> Trainer:
        return Trainer(self._engine_module(), loss=keras_losses.get("mse"), optimizer=lambda params, device: None,
                       inference_batch_size=inference_batch_size(self))

    def _foldable_output_activation(self, loss):
        return None  # only a Sequential's last Dense splits its activation off

    def _penalty_fn(self):
        layers = [layer for layer in self.layers if layer.regularization_penalty() is not None]
        if not layers:
            return None

        def penalty():
            terms = [layer.regularization_penalty() for layer in layers]
            return sum(terms[1:], terms[0])

        # L1/L2 penalties are part of the static layers' description; custom ones are not.
        penalty.described_by_static_layers = all(layer.static_layers() is not None for layer in layers)
        return penalty

    def regularization_penalty(self):
        penalty = self._penalty_fn()  # a model used as a layer contributes its layers' penalties
        return None if penalty is None else penalty()

    def _build_from_data(self, x) -> None:
        """A subclassed model builds its layers by running once on the first two samples."""
        if self.built or x is None:
            return
        if isinstance(x, torch.utils.data.DataLoader):
            raise ConfigError(f"{self.name} is not built yet; call it once on a batch (model(x[:1])) before "
                              "training it from a DataLoader.")
        from hpctrain.engine.data import to_tensor

        sample = to_tensor(x[:2], name="x", device=torch.device("cpu"))
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                self.forward(sample)
        finally:
            self.train(was_training)
        self.built = True


def _tracked_layers(module: torch.nn.Module) -> list[Layer]:
    """The layers assigned to ``module`` as attributes (directly or in module lists/dicts), in order."""
    layers = []
    for child in module.children():
        if isinstance(child, Layer):
            layers.append(child)
        elif isinstance(child, (torch.nn.ModuleList, torch.nn.ModuleDict, torch.nn.Sequential)):
            layers.extend(_tracked_layers(child))
    return list({id(layer): layer for layer in layers}.values())


_TAKES_TRAINING: dict[type, bool] = {}


def _takes_training(cls: type) -> bool:
    if cls not in _TAKES_TRAINING:
        parameters = inspect.signature(cls.call).parameters
        _TAKES_TRAINING[cls] = "training" in parameters or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    return _TAKES_TRAINING[cls]


class Sequential(Model):
    """A stack of layers, each feeding the next; ``Sequential([...])`` or ``.add(layer)``."""

    @classmethod
    def _default_name(cls) -> str:
        return "sequential"

    def __init__(self, layers=None, name=None, trainable=True):
        super().__init__(name=name, trainable=trainable)
        self._stack = torch.nn.ModuleList()
        self._input_shape = None
        for layer in layers or []:
            self.add(layer)

    @property
    def layers(self) -> list[Layer]:
        return [layer for layer in self._stack if not isinstance(layer, InputLayer)]

    def add(self, layer) -> None:
        if isinstance(layer, KerasTensor):
            self._set_input_shape(layer.shape[1:])
            return
        if not isinstance(layer, torch.nn.Module):
            raise ConfigError(f"Sequential.add takes a layer; got {type(layer).__name__}.")
        declared = getattr(layer, "declared_input_shape", None)
        if isinstance(layer, Model) and not len(self._stack) and self._input_shape is None:
            lent = getattr(layer, "input_shape", None)  # a built model in first place lends its input shape
            if isinstance(lent, tuple):
                self._set_input_shape(lent[1:])
        if declared is not None:
            if len(self._stack) and self._input_shape is None:
                raise ConfigError(f"layer {layer.name} declares an input shape but is not the first layer.")
            if self._input_shape is None:
                self._set_input_shape(declared)
        self._stack.append(layer)
        if self._input_shape is not None:
            self._build_layers()

    def _set_input_shape(self, shape) -> None:
        self._input_shape = tuple(shape)

    def _build_layers(self) -> None:
        shape = (None, *self._input_shape)
        for layer in self._stack:
            if isinstance(layer, Layer) and not layer.built:
                layer.build(shape)
            shape = layer.compute_output_shape(shape) if isinstance(layer, Layer) else shape
        self.built = True

    def build(self, input_shape=None) -> None:
        if input_shape is not None:
            self._set_input_shape(tuple(input_shape)[1:])
        if self._input_shape is None:
            raise ConfigError("build needs the input shape, e.g. model.build((None, 784)).")
        self._build_layers()

    def _build_from_data(self, x) -> None:
        if x is None or isinstance(x, torch.utils.data.DataLoader):
            if self._input_shape is None:
                raise ConfigError("give the first layer an input shape (input_shape=... or Input(shape=...)) "
                                  "when training from a DataLoader.")
            return
        shape = tuple(x.shape[1:])
        if self._input_shape is None:
            self._set_input_shape(shape)
            self._build_layers()
            return
        if len(shape) != len(self._input_shape) or any(
                expected is not None and expected != given for expected, given in zip(self._input_shape, shape)):
            raise InputError(
                f"x has samples shaped {shape} ({_features(shape)}) but the model's first layer expects "
                f"{self._input_shape} ({_features(self._input_shape)}). Reshape x, or change the first layer's "
                "input_dim/input_shape."
            )

    def get_config(self) -> dict:
        return {"name": self.name,
                "input_shape": None if self._input_shape is None else list(self._input_shape),
                "layers": [{"class_name": type(layer).__name__, "config": layer.get_config()} for layer in self.layers]}

    @classmethod
    def from_config(cls, config: dict) -> "Sequential":
        from hpctrain.keras.layers import deserialize

        model = cls(name=config.get("name"))
        if config.get("input_shape") is not None:
            model._set_input_shape(tuple(config["input_shape"]))
        for entry in config.get("layers", []):
            model.add(deserialize(entry))
        return model

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.layers:
            shape = layer.compute_output_shape(shape) if isinstance(layer, Layer) else shape
        return shape

    @property
    def input_shape(self):
        return None if self._input_shape is None else (None, *self._input_shape)

    @property
    def output_shape(self):
        if self._input_shape is None:
            raise ConfigError(f"{self.name} has no output shape yet: its input shape is unknown. Give the first "
                              "layer input_shape=..., start with keras.Input(...), or call the model on data.")
        return self.output_shapes()[-1] if self.layers else self.input_shape

    def output_shapes(self) -> list[tuple]:
        shape = (None, *self._input_shape) if self._input_shape is not None else None
        shapes = []
        for layer in self.layers:
            shape = layer.compute_output_shape(shape) if shape is not None else None
            shapes.append(shape)
        return shapes

    def forward(self, x):
        for layer in self._stack:
            x = layer(x)
        return x

    def static_layers(self, include_activation: bool = True):
        """The stack as the engine's static primitives, or ``None`` if some layer has none;
        ``include_activation=False`` leaves out the final activation (the loss takes logits)."""
        layers = []
        for position, layer in enumerate(self.layers):
            is_last = position == len(self.layers) - 1
            described = layer.static_layers(include_activation=include_activation or not is_last) \
                if hasattr(layer, "static_layers") else None
            if described is None:
                return None
            layers.extend(described)
        return layers

    def forward_logits(self, x):
        """Everything but the final activation, which the loss then takes from logits."""
        *body, last = self._stack
        for layer in body:
            x = layer(x)
        return last.pre_activation(x)

    def _foldable_output_activation(self, loss):
        last = self.layers[-1] if self.layers else None
        activation = getattr(last, "activation", None)
        kind = _FOLDABLE.get(activation)
        if kind is None or not hasattr(last, "pre_activation") or loss.from_logits or not _has_logits_form(loss):
            return None
        matches = (kind == "categorical" and loss.name.endswith("categorical_crossentropy")) or (
            kind == "binary" and loss.name == "binary_crossentropy")
        return activation if matches else None


class _LogitsView(torch.nn.Module):
    """The model minus its final activation; shares every parameter with the model."""

    def __init__(self, model: Sequential):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_logits(x)

    def static_layers(self):
        return self.model.static_layers(include_activation=False)


def _has_logits_form(loss) -> bool:
    from hpctrain.engine.losses import BinaryCrossentropy, CrossEntropy

    return isinstance(loss, (CrossEntropy, BinaryCrossentropy))


# Layers that look integer ids up; a model holding one gets integer inputs as they are.
_TAKES_IDS = (Embedding, torch.nn.Embedding, torch.nn.EmbeddingBag)


def _numeric_or_loader(x, name: str):
    if x is None or isinstance(x, torch.utils.data.DataLoader):
        return x
    return as_numeric(x, name=name)


def _features(shape) -> str:
    return f"{shape[0]} features" if len(shape) == 1 else f"shape {shape}"


def _check_jit_compile(jit_compile):
    if jit_compile not in ("auto", True, False):
        raise ConfigError(f"jit_compile must be 'auto', True or False; got {jit_compile!r}.")
    return jit_compile


def _check_metric_name(metric) -> None:
    from hpctrain.engine.metrics import METRIC_NAMES, Metric
    from hpctrain.errors import valid_names_hint

    if isinstance(metric, Metric) or hasattr(metric, "update_state") or callable(metric) and not isinstance(
            metric, type):
        return
    if not isinstance(metric, str) or metric.lower() not in METRIC_NAMES:
        raise ConfigError(f"unknown metric {metric!r}; {valid_names_hint(METRIC_NAMES)}, a Metric object, or a "
                          "function fn(y_true, y_pred).")


def _metric_name(metric) -> str:
    if isinstance(metric, str):
        return metric
    return getattr(metric, "name", None) or getattr(metric, "__name__", type(metric).__name__)


def _reject_unsupported(**arguments) -> None:
    given = [name for name, value in arguments.items() if value is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} is not supported yet; remove it from the call.")


LAYERS["Sequential"] = Sequential  # a model can be a layer of another model, and is saved as one


# Rows x the widest layer's values per row kept near 32 MB of float32: a convnet's activations
# (21,632 values per MNIST image after the first Conv2D) then stay in cache-sized batches of 256
# (measured 3-6x faster than 8,192), while MLPs keep the full 8,192.
INFERENCE_VALUES_PER_BATCH = 2 ** 23


def inference_batch_size(model) -> int:
    """Evaluation/prediction rows per batch: a power of two, at most ``INFERENCE_BATCH``, at least 32."""
    shapes = model.output_shapes() if isinstance(model, Sequential) and model.built else []
    widths = [math.prod(shape[1:]) for shape in shapes
              if isinstance(shape, tuple) and all(is_whole_number(n) for n in shape[1:])]
    input_shape = getattr(model, "_input_shape", None)
    if input_shape is not None and None not in input_shape:  # a variable length has no width to size by
        widths.append(math.prod(input_shape))
    if not widths:
        return INFERENCE_BATCH
    rows = INFERENCE_VALUES_PER_BATCH // max(max(widths), 1)
    return max(32, min(INFERENCE_BATCH, 1 << max(rows, 1).bit_length() - 1))


def load_model(filepath, compile: bool = False):
    """A model written by ``model.save(path)``: architecture and weights, uncompiled."""
    from hpctrain.keras.saving import load_model as _load

    return _load(str(filepath), compile=compile)
