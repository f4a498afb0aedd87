"""A Keras Sequential's forward pass run as torch functional ops on the layers' own variables.

Keras's ``model(x)`` goes through ``Model.__call__``, the Functional graph and every layer's
``__call__`` (input conversion, name scopes, call contexts), and its torch conv and pooling ops
transpose each image NHWC -> NCHW and back with a copy each way. Here each layer the engine knows
(Dense, Conv1D/Conv2D, Max/AveragePooling1D/2D, the global poolings, Flatten, Reshape,
Activation/ReLU) runs as the same torch op on ``variable.value`` (the torch Parameter the optimizer
updates in place, so nothing is copied); every other layer (BatchNormalization, custom layers, a
Dropout with its own seed, ...) is called as Keras calls it, ``layer(x, training=...)``.

Rewrites of what runs (benchmarks/bench_native_forward.py times the model without them):
- An unseeded Dropout draws its mask as the engine does (``engine.dropout``: 15-bit uniform
  levels compared to the rate, from torch's global generator as Keras's unseeded dropout): the
  same keep probability (within 2**-15) at a seventh of ``bernoulli_``'s cost (0.41 against
  2.9 ms on the MNIST convnet, benchmarks/results/dropout_mask.txt). The mask is drawn in
  another way than Keras's own, so a fit drops other values than Keras's own fit; a seeded
  Dropout keeps Keras's call and stream.
- A convolution with ReLU followed by max pooling pools first: max and ReLU commute (ReLU is
  monotone), so the values and the gradients are the same, and the ReLU and its backward pass
  touch a quarter of the values (3.4 ms a step on the MNIST convnet before, ~0.4 after).
- 2x2 max pooling runs on hpctrain's own kernels where the native library is built
  (:class:`MaxPool2x2`), and a user's leaf layer is called at its ``call`` (:class:`DirectCall`).

Layout: image activations between known layers keep torch's NCHW logical shape with channels-last
memory, which is Keras's NHWC memory order, so entering and leaving that layout (``permute``) is a
view, never a copy; torch's CPU conv and pooling kernels take channels-last directly. Measured on
the Keras MNIST convnet (batch 128, forward and backward, 1 thread, a shared 2-core AVX-512 Xeon,
interleaved rounds; benchmarks/bench_native_forward.py): 53.1 ms with these views against 52.7 ms
with contiguous NCHW copies at each move (median ratios 0.98-1.03 over runs: the copies are lost in
the convolutions' time here), so the views are kept: they allocate nothing.

A model qualifies when no layer makes a Keras mask (masks would ride on the tensors the native ops
replace) and its input is float32; a batch qualifies when it is a float32 tensor of the input's
shape. Anything else takes Keras's own call.
"""

from __future__ import annotations

import inspect

import keras
import torch
import torch.nn.functional as F

from hpctrain.engine import native
from hpctrain.engine.dropout import dropout

KERAS_LAYOUT, TORCH_LAYOUT, ANY_LAYOUT = "keras", "torch", "any"

# Keras built-in activations that act element by element, so they run in either layout. Each is
# called as Keras's own function (the same torch op), except relu, run as torch.relu directly.
_ELEMENTWISE = {keras.activations.relu, keras.activations.sigmoid, keras.activations.tanh,
                keras.activations.elu, keras.activations.selu, keras.activations.gelu,
                keras.activations.silu, keras.activations.softplus, keras.activations.softsign,
                keras.activations.exponential, keras.activations.hard_sigmoid,
                keras.activations.leaky_relu, keras.activations.relu6, keras.activations.mish}
_ALONG_LAST_AXIS = {keras.activations.softmax, keras.activations.log_softmax}

# Layers whose compute_mask is their own but never makes a mask where none came in.
_MASK_PASSING = (keras.layers.GlobalAveragePooling1D, keras.layers.RNN)


def to_torch_layout(x: torch.Tensor) -> torch.Tensor:
    """NHWC (or NLC) as NCHW (NCL): a view; channels-last memory where x was contiguous."""
    return x.permute(0, x.ndim - 1, *range(1, x.ndim - 1)) if x.ndim > 2 else x


def to_keras_layout(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, *range(2, x.ndim), 1) if x.ndim > 2 else x


# ---- steps: one per layer ---------------------------------------------------------------------


class KerasCall:
    """A layer the engine has no op for: called as Keras calls it, in Keras's layout.

    ``training`` is passed only where something reads it: the layer's call takes it, or a
    sublayer may find it in the call context. Without keyword arguments Keras's ``__call__``
    skips converting its arguments one by one (measured: about a third of its overhead)."""

    layout = KERAS_LAYOUT

    def __init__(self, layer):
        self.layer = layer
        parameters = inspect.signature(layer.call).parameters.values()
        self.reads_training = (any(p.name == "training" or p.kind is p.VAR_KEYWORD for p in parameters)
                               or bool(layer._flatten_layers(include_self=False)))

    def __call__(self, x, training):
        return self.layer(x, training=training) if self.reads_training else self.layer(x)


class DirectCall:
    """A user's own layer with no sublayers, called at its ``call``.

    Around ``call``, Keras's ``__call__`` converts inputs, opens a call context and a name scope,
    and records masks: for a built float32 layer given a float32 tensor, without masks, sublayers
    or rematerialization, none of it changes the result, and it costs about as much again as the
    call (the benchmarks' residual layer: 241 us a call against 118 us for ``call``;
    benchmarks/bench_layer_call.py).
    What it does that matters is kept: an entry layer's ``add_loss`` terms are cleared at each
    call, and any other input (another dtype, under autocast) goes through ``__call__``."""

    layout = KERAS_LAYOUT

    def __init__(self, layer):
        self.layer = layer
        self.reads_training = "training" in inspect.signature(layer.call).parameters

    def __call__(self, x, training):
        layer = self.layer
        if x.dtype != torch.float32:
            return layer(x, training=training) if self.reads_training else layer(x)
        if layer._losses:  # Keras's private list, in the pinned range: what __call__ clears
            layer._clear_losses()
        return layer.call(x, training=training) if self.reads_training else layer.call(x)


def calls_directly(layer) -> bool:
    """Whether ``layer`` is a user's built leaf layer whose ``call`` takes the input alone (and
    perhaps ``training``): see :class:`DirectCall`."""
    if type(layer).__module__.split(".")[0] == "keras" or not layer.built or not _plain(layer):
        return False
    if (layer._flatten_layers(include_self=False) or layer._remat_mode
            or getattr(layer, "quantization_mode", None) is not None
            or layer._forward_hooks or layer._forward_pre_hooks):
        return False
    inputs, *others = inspect.signature(layer.call).parameters.values()
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return inputs.kind in positional and all(
        p.name == "training" or p.name != "mask" and p.kind in positional + (inspect.Parameter.KEYWORD_ONLY,)
        and p.default is not p.empty for p in others)


class Elementwise:
    layout = ANY_LAYOUT

    def __init__(self, function):
        self.function = function

    def __call__(self, x, training):
        return self.function(x)


class LastAxis(Elementwise):
    layout = KERAS_LAYOUT


class Dense:
    layout = KERAS_LAYOUT

    def __init__(self, layer, activation):
        self.layer, self.activation = layer, activation

    def linear(self, x):
        layer = self.layer
        if layer.use_bias and x.ndim == 2:
            return torch.addmm(layer.bias.value, x, layer.kernel.value)
        z = torch.matmul(x, layer.kernel.value)
        return z + layer.bias.value if layer.use_bias else z

    def __call__(self, x, training):
        z = self.linear(x)
        return z if self.activation is None else self.activation(z)


class Convolution:
    """Conv1D/Conv2D: Keras's kernel (k..., in, out) read as torch's (out, in, k...), a view."""

    layout = TORCH_LAYOUT

    def __init__(self, layer, activation):
        self.layer, self.activation = layer, activation
        self.rank = len(layer.kernel_size)
        self.kernel_order = (self.rank + 1, self.rank, *range(self.rank))
        self.op = F.conv1d if self.rank == 1 else F.conv2d

    def __call__(self, x, training):
        layer = self.layer
        kernel = layer.kernel.value.permute(self.kernel_order)
        padding = 0
        if layer.padding == "same":
            x, padding = same_padding(x, kernel.shape[2:], layer.strides, layer.dilation_rate, "constant")
        z = self.op(x, kernel, layer.bias.value if layer.use_bias else None, layer.strides, padding,
                    layer.dilation_rate, layer.groups)
        return z if self.activation is None else self.activation(z)


_POOLING_OPS = {("max", 1): F.max_pool1d, ("max", 2): F.max_pool2d,
                ("average", 1): F.avg_pool1d, ("average", 2): F.avg_pool2d}


class MaxPool2x2(torch.autograd.Function):
    """2x2 max pooling, stride 2, on channels-last float32 images by hpctrain's own kernels
    (engine/native/pooling.cpp): ATen's values and gradients, at about half its time
    (benchmarks/results/keras_models_profile.txt); with ``relu``, ReLU of the pooled values in
    the same pass forward and backward."""

    @staticmethod
    def forward(ctx, x, kernels, relu):
        out, winner = kernels.max_pool2x2_relu(x) if relu else kernels.max_pool2x2(x)
        ctx.save_for_backward(winner)
        ctx.kernels, ctx.size = kernels, x.shape[2:]
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (winner,) = ctx.saved_tensors
        return ctx.kernels.max_pool2x2_backward(grad, winner, *ctx.size), None, None


class Pooling:
    """A Keras pooling layer; with ``relu``, ReLU applied to its output (see :func:`pool_before_relu`)."""

    layout = TORCH_LAYOUT

    def __init__(self, layer, relu: bool = False):
        self.layer, self.relu = layer, relu
        self.op = _POOLING_OPS[(layer.pool_mode, len(layer.pool_size))]
        # Keras's torch average pool leaves the padding out of each mean.
        self.options = {} if layer.pool_mode == "max" else {"count_include_pad": False}
        plain_2x2 = (layer.pool_mode == "max" and tuple(layer.pool_size) == (2, 2)
                     and tuple(layer.strides) == (2, 2) and layer.padding == "valid")
        self.kernels = native.kernels() if plain_2x2 else None

    def __call__(self, x, training):
        if self.kernels is not None and x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 4 \
                and x.is_contiguous(memory_format=torch.channels_last):
            return MaxPool2x2.apply(x, self.kernels, self.relu)
        layer = self.layer
        padding = 0
        if layer.padding == "same":
            x, padding = same_padding(x, layer.pool_size, layer.strides, 1, "replicate")
        out = self.op(x, layer.pool_size, layer.strides, padding, **self.options)
        # ReLU in place: the pooled tensor is new, and max pooling's backward reads its input and
        # indices, never its output.
        return torch.relu_(out) if self.relu else out


class GlobalPooling:
    layout = TORCH_LAYOUT

    def __init__(self, layer, reduce):
        self.keepdims, self.reduce = layer.keepdims, reduce

    def __call__(self, x, training):
        return self.reduce(x, tuple(range(2, x.ndim)), keepdim=self.keepdims)


class Dropout:
    layout = ANY_LAYOUT

    def __init__(self, rate):
        self.rate = rate

    def __call__(self, x, training):
        return dropout(x, self.rate) if training else x


class Reshape:
    layout = KERAS_LAYOUT

    def __init__(self, shape):
        self.shape = shape

    def __call__(self, x, training):
        return x.reshape(x.shape[0], *self.shape)


def same_padding(x, kernel, strides, dilation, mode):
    """Keras's torch "same" padding: the TF split (extra pixel at the end); symmetric splits go to
    the op as its ``padding``, others pad ``x`` (zeros for conv, edge values for pooling)."""
    spatial = x.shape[2:]
    dilation = (dilation,) * len(spatial) if isinstance(dilation, int) else dilation
    pads = [_pad_length(size, k, s, d) for size, k, s, d in zip(spatial, kernel, strides, dilation, strict=True)]
    if all(left == right for left, right in pads):
        return x, [left for left, _ in pads]
    flat = [side for pad in reversed(pads) for side in pad]
    return F.pad(x, flat, mode=mode), 0


def _pad_length(size, kernel, stride, dilation):
    extent = (kernel - 1) * dilation + 1
    total = extent - 1 if stride == 1 else max(0, (-(-size // stride) - 1) * stride + extent - size)
    return total // 2, total - total // 2


# ---- which step a layer gets ------------------------------------------------------------------


def _activation_step(function):
    """The op for a Keras activation function, or ``None`` where the engine knows none."""
    if function is keras.activations.linear:
        return None, ANY_LAYOUT
    if function is keras.activations.relu:
        return torch.relu, ANY_LAYOUT
    if function in _ELEMENTWISE:
        return function, ANY_LAYOUT
    if function in _ALONG_LAST_AXIS:
        return function, KERAS_LAYOUT
    return False, None


def _plain(layer) -> bool:
    """A layer whose call is Keras's own float32 code: no subclass, LoRA, quantization or activity
    regularizer (Keras's __call__ records that loss), channels-last data."""
    return (layer.dtype_policy.name == "float32" and layer.activity_regularizer is None
            and not getattr(layer, "lora_enabled", False)
            and getattr(layer, "data_format", "channels_last") == "channels_last")


def step_for(layer, *, keep_activation: bool = True):
    kind = type(layer)
    if not _plain(layer):
        return KerasCall(layer)
    if kind in (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D):
        function, layout = _activation_step(layer.activation if keep_activation else keras.activations.linear)
        if function is False:
            return KerasCall(layer)
        if kind is keras.layers.Dense:
            return Dense(layer, function)
        if layout != ANY_LAYOUT or layer.padding not in ("valid", "same"):
            return KerasCall(layer)
        return Convolution(layer, function)
    if kind in (keras.layers.MaxPooling1D, keras.layers.MaxPooling2D,
                keras.layers.AveragePooling1D, keras.layers.AveragePooling2D):
        return Pooling(layer)
    if kind in (keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D):
        return GlobalPooling(layer, torch.mean)
    if kind in (keras.layers.GlobalMaxPooling1D, keras.layers.GlobalMaxPooling2D):
        return GlobalPooling(layer, torch.amax)
    if draws_engine_mask(layer):
        return Dropout(float(layer.rate))
    if kind is keras.layers.Flatten:
        return Reshape((-1,))
    if kind is keras.layers.Reshape:
        return Reshape(tuple(-1 if d is None else d for d in layer.target_shape))
    if kind is keras.layers.Activation:
        function, layout = _activation_step(layer.activation)
        return KerasCall(layer) if function is False else _activation_layer(function, layout)
    if kind is keras.layers.ReLU and layer.max_value is None and not layer.negative_slope and not layer.threshold:
        return Elementwise(torch.relu)
    return DirectCall(layer) if calls_directly(layer) else KerasCall(layer)


def draws_engine_mask(layer) -> bool:
    """A Dropout whose mask the engine draws: Keras's own draws from torch's global generator
    (``F.dropout``) only without a seed or noise shape, and rate 1 is all zeros."""
    return (type(layer) is keras.layers.Dropout and 0 < layer.rate < 1 and layer.noise_shape is None
            and layer.seed_generator.get_config()["seed"] is None)


def pool_before_relu(steps):
    """Conv+ReLU then max pooling as conv, then pooling with ReLU: the same values and gradients
    (max and ReLU commute), with ReLU on the pooled values (a quarter of them for 2x2 pooling),
    in the pooling kernel's own pass where hpctrain's kernel pools."""
    rewritten = []
    for step in steps:
        previous = rewritten[-1] if rewritten else None
        if (isinstance(step, Pooling) and step.layer.pool_mode == "max" and isinstance(previous, Convolution)
                and previous.activation is torch.relu):
            rewritten[-1] = Convolution(previous.layer, None)
            rewritten.append(Pooling(step.layer, relu=True))
        else:
            rewritten.append(step)
    return rewritten


def _activation_layer(function, layout):
    if function is None:
        return Elementwise(lambda x: x)
    return Elementwise(function) if layout == ANY_LAYOUT else LastAxis(function)


# ---- the model ----------------------------------------------------------------------------------


class NativeForward:
    """Runs the steps, moving activations between Keras's layout and torch's only where a step
    needs the other one (each move a view)."""

    def __init__(self, steps, input_shape):
        self.steps = steps
        self.input_shape = input_shape

    def takes(self, x) -> bool:
        if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.ndim != len(self.input_shape) + 1:
            return False
        return all(want is None or want == have for want, have in zip(self.input_shape, x.shape[1:]))

    def __call__(self, x, training: bool):
        in_torch_layout = False
        for step in self.steps:
            if step.layout == TORCH_LAYOUT and not in_torch_layout:
                x, in_torch_layout = to_torch_layout(x), True
            elif step.layout == KERAS_LAYOUT and in_torch_layout:
                x, in_torch_layout = to_keras_layout(x), False
            x = step(x, training)
        return to_keras_layout(x) if in_torch_layout else x


def native_forward(model, *, logits: bool = False) -> NativeForward | None:
    """The model's forward as known ops where it qualifies, else ``None`` (Keras's call runs it).
    ``logits``: the last layer is a Dense, or an Activation layer, whose activation the engine
    applies itself."""
    if not isinstance(model, keras.Sequential) or _makes_masks(model):
        return None
    try:
        (spec,) = model.inputs
    except (AttributeError, ValueError):
        return None
    if keras.backend.standardize_dtype(spec.dtype) != "float32":
        return None
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if not layers:
        return None
    steps = [step_for(layer) for layer in layers[:-1]]
    if not (logits and ends_in_activation_layer(model)):
        steps.append(step_for(layers[-1], keep_activation=not logits))  # else the activation is the engine's
        if logits and not isinstance(steps[-1], Dense):
            return None
    if all(isinstance(step, KerasCall) for step in steps):
        return None
    return NativeForward(pool_before_relu(steps), tuple(spec.shape[1:]))


def ends_in_activation_layer(model) -> bool:
    """Whether a Sequential's last layer is an ``Activation`` layer following another layer."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    return len(layers) > 1 and type(layers[-1]) is keras.layers.Activation


def _makes_masks(model) -> bool:
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Masking) or getattr(layer, "mask_zero", False):
            return True
        if type(layer).compute_mask is not keras.layers.Layer.compute_mask and not isinstance(
                layer, _MASK_PASSING + (keras.layers.Embedding,)):
            return True
    return False
