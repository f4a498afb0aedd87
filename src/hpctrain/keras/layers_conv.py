"""Convolution and pooling layers: Keras's channels-last shapes on PyTorch's kernels.

A Keras image batch is ``(batch, height, width, channels)``. Read through ``movedim(-1, 1)`` it
is an NCHW tensor in PyTorch's channels-last memory format, which is the layout the CPU
convolution kernels (oneDNN) prefer: the user's tensor goes into ``F.conv2d`` without a copy, and
the output comes back the same way. Kernels are stored as Keras stores them,
``(*kernel_size, in_channels / groups, filters)``, so ``get_weights`` is Keras's layout; the permute
to PyTorch's ``(filters, in, *kernel_size)`` is a view.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hpctrain.arguments import is_whole_number
from hpctrain.errors import ConfigError
from hpctrain.keras.layers import Layer, kernel_and_bias_config, set_kernel_and_bias_options, weight_penalty

_CONV = {1: F.conv1d, 2: F.conv2d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d}


# --- argument checks -------------------------------------------------------------------------------


def _int_tuple(value, rank: int, argument: str, layer: str) -> tuple[int, ...]:
    """``3`` or ``(3, 3)`` -> ``(3, 3)``: Keras accepts one int for every spatial axis."""
    values = (value,) * rank if is_whole_number(value) else tuple(value) if isinstance(value, (tuple, list)) else None
    if values is None or len(values) != rank or not all(is_whole_number(v) and v >= 1 for v in values):
        raise ConfigError(f"{layer} {argument} must be a whole number >= 1 or a tuple of {rank}; got {value!r}.")
    return tuple(int(v) for v in values)


def _padding(value, layer: str, allowed=("valid", "same")) -> str:
    if not isinstance(value, str) or value.lower() not in allowed:
        raise ConfigError(f"{layer} padding must be one of {', '.join(map(repr, allowed))}; got {value!r}.")
    return value.lower()


def _data_format(value, layer: str) -> str:
    if value is None:
        return "channels_last"
    if value not in ("channels_last", "channels_first"):
        raise ConfigError(f"{layer} data_format must be 'channels_last' (Keras's default) or 'channels_first'; "
                          f"got {value!r}.")
    return value


def _check_rank(layer, input_shape, rank: int) -> None:
    expected = 2 + rank
    if len(input_shape) != expected:
        axes = "(batch, steps, channels)" if rank == 1 else "(batch, height, width, channels)"
        raise ConfigError(f"{type(layer).__name__} {layer.name} takes inputs shaped {axes}; got "
                          f"{tuple(input_shape)}. Add a Reshape layer first, e.g. Reshape((28, 28, 1)).")


# --- shape arithmetic (TensorFlow's rules, which Keras follows) ----------------------------------


def _same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """'same' padding: the output has ceil(size / stride) positions; the odd pixel goes after."""
    reach = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + reach - size, 0)
    return total // 2, total - total // 2


def _output_length(size, kernel: int, stride: int, dilation: int, padding: str):
    if size is None:
        return None
    if padding in ("same", "causal"):
        return math.ceil(size / stride)
    return (size - (kernel - 1) * dilation - 1) // stride + 1


def _check_positive(layer, input_shape, spatial, window: str) -> None:
    """Keras refuses a window larger than its 'valid' input, where the output would be empty."""
    if any(n is not None and n < 1 for n in spatial):
        raise ConfigError(f"{layer.name}: {window} with padding='{layer.padding}' does not fit an input shaped "
                          f"{tuple(input_shape)}: the output would have {tuple(spatial)} positions. Use a smaller "
                          "window or stride, padding='same', or a larger input.")


def _spatial_pads(spatial, kernel, strides, dilation, padding) -> list[tuple[int, int]]:
    if padding == "valid":
        return [(0, 0)] * len(spatial)
    if padding == "causal":  # only the past: all the padding goes before
        return [((k - 1) * d, 0) for k, d in zip(kernel, dilation)]
    return [_same_pads(n, k, s, d) for n, k, s, d in zip(spatial, kernel, strides, dilation)]


def _split_pads(pads):
    """Symmetric pads go to the kernel (no copy); uneven ones need an explicit ``F.pad`` first."""
    if all(before == after for before, after in pads):
        return tuple(before for before, _ in pads), None
    explicit = [amount for before, after in reversed(pads) for amount in (before, after)]
    return 0, explicit


class _ChannelsLast:
    """The channels-last <-> channels-first views shared by convolution and pooling."""

    data_format: str

    def _to_channels_first(self, x):
        if not x.is_floating_point():
            x = x.to(torch.float32)  # Keras casts integer images (uint8 pixels) to the layer's float32
        return x.movedim(-1, 1) if self.data_format == "channels_last" else x

    def _from_channels_first(self, y):
        return y.movedim(1, -1) if self.data_format == "channels_last" else y

    def _spatial(self, shape) -> tuple:
        return tuple(shape[1:-1]) if self.data_format == "channels_last" else tuple(shape[2:])

    def _with_spatial(self, shape, spatial, channels) -> tuple:
        if self.data_format == "channels_last":
            return (shape[0], *spatial, channels)
        return (shape[0], channels, *spatial)


# --- convolution ---------------------------------------------------------------------------------


class _Conv(_ChannelsLast, Layer):
    rank: int

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None, dilation_rate=1,
                 groups=1, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        layer = type(self).__name__
        if not is_whole_number(filters) or filters < 1:
            raise ConfigError(f"{layer} filters must be a whole number >= 1; got {filters!r}.")
        self.filters = int(filters)
        self.kernel_size = _int_tuple(kernel_size, self.rank, "kernel_size", layer)
        self.strides = _int_tuple(strides, self.rank, "strides", layer)
        self.dilation_rate = _int_tuple(dilation_rate, self.rank, "dilation_rate", layer)
        allowed = ("valid", "same", "causal") if self.rank == 1 else ("valid", "same")
        self.padding = _padding(padding, layer, allowed)
        self.data_format = _data_format(data_format, layer)
        self.groups = _int_tuple(groups, 1, "groups", layer)[0]
        if filters % self.groups:
            raise ConfigError(f"{layer} filters ({filters}) must be divisible by groups ({groups}).")
        set_kernel_and_bias_options(self, activation, use_bias, kernel_initializer, bias_initializer,
                                    kernel_regularizer, bias_regularizer)

    def build(self, input_shape):
        _check_rank(self, input_shape, self.rank)
        channels = input_shape[-1] if self.data_format == "channels_last" else input_shape[1]
        if channels is None or channels % self.groups:
            raise ConfigError(f"{type(self).__name__} {self.name}: the input's channel count ({channels}) must be "
                              f"known and divisible by groups ({self.groups}).")
        shape = (*self.kernel_size, channels // self.groups, self.filters)
        self.kernel = self._new_weight(shape, self.kernel_initializer)
        self.bias = self._new_weight((self.filters,), self.bias_initializer) if self.use_bias else None
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        spatial = [_output_length(n, k, s, d, self.padding) for n, k, s, d in
                   zip(self._spatial(input_shape), self.kernel_size, self.strides, self.dilation_rate)]
        _check_positive(self, input_shape, spatial, f"kernel_size={self.kernel_size}")
        return self._with_spatial(input_shape, spatial, self.filters)

    def pre_activation(self, x):
        x = self._to_channels_first(x)
        pads = _spatial_pads(x.shape[2:], self.kernel_size, self.strides, self.dilation_rate, self.padding)
        padding, explicit = _split_pads(pads)
        if explicit is not None:
            x = F.pad(x, explicit)
        # (*k, in, out) -> (out, in, *k): a view; the kernel copies it into its own layout anyway.
        weight = self.kernel.permute(self.rank + 1, self.rank, *range(self.rank))
        y = _CONV[self.rank](x, weight, self.bias, self.strides, padding, self.dilation_rate, self.groups)
        return self._from_channels_first(y)

    def forward(self, x):
        return self.activation(self.pre_activation(x))

    def regularization_penalty(self):
        return weight_penalty((self.kernel_regularizer, self.kernel), (self.bias_regularizer, self.bias))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": list(self.kernel_size),
                "strides": list(self.strides), "padding": self.padding, "data_format": self.data_format,
                "dilation_rate": list(self.dilation_rate), "groups": self.groups, **kernel_and_bias_config(self)}


class Conv1D(_Conv):
    """Keras's Conv1D on ``(batch, steps, channels)``; padding 'valid', 'same' or 'causal'."""

    rank = 1


class Conv2D(_Conv):
    """Keras's Conv2D on ``(batch, height, width, channels)``; kernel ``(kh, kw, in, filters)``."""

    rank = 2


# --- pooling -------------------------------------------------------------------------------------


class _Pooling(_ChannelsLast, Layer):
    rank: int

    def __init__(self, pool_size=2, strides=None, padding="valid", data_format=None, **kwargs):
        super().__init__(**kwargs)
        layer = type(self).__name__
        self.pool_size = _int_tuple(pool_size, self.rank, "pool_size", layer)
        # Keras: strides default to the pool size (non-overlapping windows).
        self.strides = self.pool_size if strides is None else _int_tuple(strides, self.rank, "strides", layer)
        self.padding = _padding(padding, layer)
        self.data_format = _data_format(data_format, layer)

    def build(self, input_shape):
        _check_rank(self, input_shape, self.rank)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        spatial = [_output_length(n, k, s, 1, self.padding) for n, k, s in
                   zip(self._spatial(input_shape), self.pool_size, self.strides)]
        _check_positive(self, input_shape, spatial, f"pool_size={self.pool_size}")
        channels = input_shape[-1] if self.data_format == "channels_last" else input_shape[1]
        return self._with_spatial(input_shape, spatial, channels)

    def forward(self, x):
        x = self._to_channels_first(x)
        pads = _spatial_pads(x.shape[2:], self.pool_size, self.strides, (1,) * self.rank, self.padding)
        return self._from_channels_first(self._pool(x, pads))

    def _pool(self, x, pads):
        raise NotImplementedError

    def get_config(self):
        return {**super().get_config(), "pool_size": list(self.pool_size), "strides": list(self.strides),
                "padding": self.padding, "data_format": self.data_format}


class MaxPooling2D(_Pooling):
    """The maximum of each window; 'same' padding never wins a maximum (it is -inf)."""

    rank = 2

    def _pool(self, x, pads):
        padding, explicit = _split_pads(pads)
        if explicit is not None:
            x = F.pad(x, explicit, value=-math.inf)
        return _MAX_POOL[self.rank](x, self.pool_size, self.strides, padding)


class AveragePooling2D(_Pooling):
    """The mean of each window; with 'same' padding the mean is over the real pixels only, as in Keras."""

    rank = 2

    def _pool(self, x, pads):
        padding, explicit = _split_pads(pads)
        if explicit is None:
            return _AVG_POOL[self.rank](x, self.pool_size, self.strides, padding, count_include_pad=False)
        # Uneven padding: sum over the zero-padded window, divided by the real pixels it covers.
        pooled = _AVG_POOL[self.rank](F.pad(x, explicit), self.pool_size, self.strides)
        ones = F.pad(x.new_ones((1, 1, *x.shape[2:])), explicit)
        return pooled / _AVG_POOL[self.rank](ones, self.pool_size, self.strides)


class GlobalAveragePooling2D(Layer):
    """The mean over height and width: ``(batch, h, w, c) -> (batch, c)`` (``keepdims``: ``(batch, 1, 1, c)``)."""

    def __init__(self, data_format=None, keepdims=False, **kwargs):
        super().__init__(**kwargs)
        self.data_format = _data_format(data_format, type(self).__name__)
        self.keepdims = bool(keepdims)
        self._axes = (1, 2) if self.data_format == "channels_last" else (2, 3)

    def build(self, input_shape):
        _check_rank(self, input_shape, 2)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        if self.keepdims:
            return tuple(1 if axis in self._axes else n for axis, n in enumerate(input_shape))
        return tuple(n for axis, n in enumerate(input_shape) if axis not in self._axes)

    def forward(self, x):
        return x.mean(dim=self._axes, keepdim=self.keepdims)

    def get_config(self):
        return {**super().get_config(), "data_format": self.data_format, "keepdims": self.keepdims}
