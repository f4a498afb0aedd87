"""A compiled Keras model read as the engine's parts: module, static layers, loss, metrics, optimizer.

Only public attributes of Keras objects are read (a layer's ``units``/``activation``/``rate``, a
loss's ``fn`` and keyword arguments, an optimizer's hyperparameters); ``get_config()`` is avoided
on this path because, where TensorFlow is installed, it imports part of it on first use.
"""

from __future__ import annotations

import math

import keras
from keras.src.losses.loss import Loss as _KerasLossBase  # noqa: F401
from keras.src.losses.losses import LossFunctionWrapper  # not exported by keras.losses

from hpctrain.engine import losses as engine_losses
from hpctrain.engine.static_step import Activation, Dropout, Linear
from hpctrain.keras.native_forward import draws_engine_mask, ends_in_activation_layer
from hpctrain.keras.traced_layers import traced_static_layers_and_why

_ACTIVATION_NAMES = {keras.activations.relu: "relu", keras.activations.tanh: "tanh",
                     keras.activations.sigmoid: "sigmoid", keras.activations.softmax: "softmax",
                     keras.activations.linear: None}

# Keras loss functions the engine has kernels for, and the keyword arguments those kernels equal.
_LOSS_FUNCTIONS = {
    keras.losses.sparse_categorical_crossentropy: ("sparse", {"ignore_class": None, "axis": -1}),
    keras.losses.categorical_crossentropy: ("categorical", {"label_smoothing": 0.0, "axis": -1}),
    keras.losses.binary_crossentropy: ("binary", {"label_smoothing": 0.0, "axis": -1}),
    keras.losses.mean_squared_error: ("mse", {}),
    keras.losses.mean_absolute_error: ("mae", {}),
}


def activation_name(function) -> str | None | bool:
    """The engine's name of a Keras activation function; ``False`` where it has none."""
    return _ACTIVATION_NAMES.get(function, False)


# ---- layers ------------------------------------------------------------------------------------


def static_layers(model, *, fold_last_activation: bool):
    """A Sequential of Dense/Dropout/Activation, and of the user's own layers that read as those
    (:mod:`hpctrain.keras.traced_layers`), as the static executor's primitives, else ``None``."""
    return _read_static_layers(model, fold_last_activation)[0]


def why_not_static_layers(model, *, fold_last_activation: bool) -> str:
    """Which layer keeps the model off the static executor, and why ("" where none does)."""
    return _read_static_layers(model, fold_last_activation)[1]


def _read_static_layers(model, fold_last_activation: bool) -> tuple[list | None, str]:
    if not isinstance(model, keras.Sequential):
        return None, "the model is not a Sequential"
    found = []
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    flattened = bool(layers) and flattens_rows(layers[0])
    if flattened:
        layers = layers[1:]  # the engine hands the static step each input row flattened
    width = _row_width(model, flattened)
    for position, layer in enumerate(layers):
        last = position == len(layers) - 1
        described, why = _static_layer(layer, keep_activation=not (last and fold_last_activation), width=width)
        if described is None:
            return None, f"layer '{layer.name}' ({type(layer).__name__}): {why}"
        found += described
        width = next((part.out_features for part in reversed(found) if isinstance(part, Linear)), width)
    return found, ""


def _row_width(model, flattened: bool) -> int | None:
    """Features per input row (after a leading Flatten), where the model's input says."""
    try:
        shape = tuple(model.inputs[0].shape[1:])
    except (AttributeError, ValueError, IndexError, TypeError):
        return None
    if not shape or not all(isinstance(size, int) for size in shape) or len(shape) > 1 and not flattened:
        return None
    return math.prod(shape)


def flattens_rows(layer) -> bool:
    """Whether ``layer`` is a ``Flatten`` that only reshapes each row (channels-last: no transpose)."""
    return type(layer) is keras.layers.Flatten and layer.data_format == "channels_last"


def _static_layer(layer, *, keep_activation: bool, width: int | None) -> tuple[list | None, str]:
    """``(primitives, "")`` for one layer, or ``(None, why not)``."""
    if not layer.trainable and layer.weights:
        return None, "its weights are frozen"
    kind = type(layer)
    if kind is keras.layers.Dense:
        return _dense(layer, keep_activation)
    if kind is keras.layers.Dropout:
        if not layer.rate:
            return [], ""
        return ([Dropout(float(layer.rate))], "") if draws_engine_mask(layer) else (
            None, "a seed, a noise shape or rate 1: Keras's own mask")
    if kind is keras.layers.Activation:
        return _activation(layer.activation, keep_activation, [])
    if kind is keras.layers.ReLU and layer.max_value is None and not layer.negative_slope and not layer.threshold:
        return [Activation("relu")], ""
    if kind is keras.layers.Flatten:  # a leading channels-last Flatten is taken before this
        return None, ("it transposes channels-first data" if layer.data_format != "channels_last"
                      else "only a leading Flatten is taken")
    if type(layer).__module__.split(".")[0] == "keras":
        return None, "no static form"
    if width is None:
        return None, "a layer of the user's own before any Dense"
    return traced_static_layers_and_why(layer, width)


def _activation(function, keep_activation: bool, described: list) -> tuple[list | None, str]:
    name = activation_name(function)
    if name is False or name == "softmax" and keep_activation:
        return None, f"activation {getattr(function, '__name__', function)}"
    return (described + [Activation(name)] if name and keep_activation else described), ""


def _dense(layer, keep_activation: bool) -> tuple[list | None, str]:
    if (layer.kernel_constraint is not None or layer.bias_constraint is not None
            or layer.activity_regularizer is not None or getattr(layer, "lora_enabled", False)):
        return None, "a constraint, an activity regularizer or LoRA"
    if len(layer.kernel.shape) != 2 or layer.dtype_policy.name != "float32":
        return None, "a kernel of more axes or a dtype policy other than float32"
    penalties = _penalty(layer.kernel_regularizer), _penalty(layer.bias_regularizer)
    if None in penalties:
        return None, "a regularizer other than L1/L2"
    (l1, l2), (bias_l1, bias_l2) = penalties
    linear = Linear(layer.kernel.value, layer.bias.value if layer.use_bias else None, transposed=False,
                    l1=l1, l2=l2, bias_l1=bias_l1, bias_l2=bias_l2)
    return _activation(layer.activation, keep_activation, [linear])


def _penalty(regularizer):
    """``(l1, l2)`` of a Keras L1/L2/L1L2 regularizer; ``None`` for any other kind."""
    if regularizer is None:
        return 0.0, 0.0
    if type(regularizer) in (keras.regularizers.L1, keras.regularizers.L2, keras.regularizers.L1L2):
        return float(getattr(regularizer, "l1", 0.0)), float(getattr(regularizer, "l2", 0.0))
    return None


def foldable_output_activation(model, loss) -> str | None:
    """``"softmax"``/``"sigmoid"`` when a Sequential ends in it (its last Dense's activation, or an
    ``Activation`` layer after another layer) and the loss is the matching cross-entropy on
    probabilities: training then runs on the logits, as Keras does on TensorFlow (cheaper, and
    never the log of a probability rounded to zero)."""
    if not isinstance(model, keras.Sequential) or not model.layers:
        return None
    last = model.layers[-1]
    if loss is None or loss.from_logits:
        return None
    if type(last) is not keras.layers.Dense and not ends_in_activation_layer(model):
        return None
    name = activation_name(last.activation)
    if name == "softmax" and isinstance(loss, engine_losses.CrossEntropy):
        return name
    if name == "sigmoid" and isinstance(loss, engine_losses.BinaryCrossentropy):
        return name
    return None


# ---- loss ----------------------------------------------------------------------------------------


def engine_loss(spec):
    """The engine's kernel equal to a compiled Keras loss, or ``None`` (Keras's object computes it)."""
    if isinstance(spec, str):
        spec = keras.losses.get(spec)
    if isinstance(spec, LossFunctionWrapper):
        if spec.reduction != "sum_over_batch_size" or type(spec).__module__.split(".")[0] != "keras":
            return None
        return _kernel_for(spec.fn, dict(spec._fn_kwargs))
    if callable(spec) and spec in _LOSS_FUNCTIONS:
        return _kernel_for(spec, {})
    return None


def _kernel_for(function, kwargs: dict):
    known = _LOSS_FUNCTIONS.get(function)
    if known is None:
        return None
    kind, neutral = known
    from_logits = bool(kwargs.pop("from_logits", False))
    if any(kwargs.get(key, value) != value for key, value in neutral.items()):
        return None
    if kind == "sparse":
        return engine_losses.CrossEntropy(sparse=True, from_logits=from_logits)
    if kind == "categorical":
        return engine_losses.CrossEntropy(sparse=False, from_logits=from_logits)
    if kind == "binary":
        return engine_losses.BinaryCrossentropy(from_logits=from_logits)
    return engine_losses.MeanSquaredError() if kind == "mse" else engine_losses.MeanAbsoluteError()


class KerasLoss(engine_losses.Loss):
    """A loss the engine has no kernel for, computed by Keras's own loss object."""

    def __init__(self, spec):
        self.keras_loss = spec if isinstance(spec, keras.losses.Loss) else LossFunctionWrapper(
            keras.losses.get(spec) if isinstance(spec, str) else spec)
        self.name = getattr(self.keras_loss, "name", None) or "loss"

    def __call__(self, prediction, target):
        return self.keras_loss(target, prediction)

    def weighted(self, prediction, target, weights):
        return self.keras_loss(target, prediction, sample_weight=weights)


# ---- metrics -------------------------------------------------------------------------------------

_ENGINE_METRIC_NAMES = {"accuracy", "acc", "mse", "mae", "mean_squared_error", "mean_absolute_error",
                        "binary_accuracy", "categorical_accuracy", "sparse_categorical_accuracy"}


def engine_metrics(specs) -> list:
    """Compiled metrics as the engine takes them: its own names, or Keras's metric objects."""
    resolved = []
    for spec in specs or []:
        if isinstance(spec, str) and spec.lower() in _ENGINE_METRIC_NAMES:
            resolved.append(spec)
        elif isinstance(spec, keras.metrics.Metric):
            resolved.append(KerasMetric(spec))
        else:
            metric = keras.metrics.get(spec)
            resolved.append(KerasMetric(metric if isinstance(metric, keras.metrics.Metric)
                                        else keras.metrics.MeanMetricWrapper(metric, name=_metric_name(spec, metric))))
    return resolved


def _metric_name(spec, metric) -> str:
    return spec if isinstance(spec, str) else getattr(metric, "__name__", type(metric).__name__)


class KerasMetric:
    """A Keras metric object as the engine runs it: each pass (train, validation) gets a fresh
    copy made from the metric's config, as Keras would rebuild it, instead of a deepcopy (which
    Keras performs by saving the object, and which fails for classes not registered)."""

    def __init__(self, metric):
        self.metric = metric
        self.name = metric.name

    def fresh_copy(self):
        try:
            return type(self.metric).from_config(self.metric.get_config())
        except (TypeError, ValueError, NotImplementedError):
            return self.metric  # a class that cannot be rebuilt from its config: the object itself

    def update_state(self, *args, **kwargs):
        return self.metric.update_state(*args, **kwargs)

    def result(self):
        return self.metric.result()

    def reset_state(self):
        return self.metric.reset_state()

    @property
    def variables(self):
        return self.metric.variables
