"""LSTM and GRU with Keras's weight layout, run by PyTorch's fused recurrent kernels.

Keras keeps three weights per layer: ``kernel (features, gates * units)``, ``recurrent_kernel
(units, gates * units)`` and ``bias``. They are stored so, for ``get_weights``/``set_weights`` and
saving; each forward hands PyTorch's own LSTM/GRU kernel the transposed (and, for GRU, gate-reordered)
views through ``torch.func.functional_call``, so autograd carries the gradients back to the Keras weights.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from hpctrain.arguments import is_whole_number
from hpctrain.errors import ConfigError
from hpctrain.keras import activations, initializers, regularizers
from hpctrain.keras.layers import Layer, weight_penalty


class _Recurrent(Layer):
    gates: int
    torch_class: type

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal", bias_initializer="zeros",
                 kernel_regularizer=None, recurrent_regularizer=None, bias_regularizer=None, dropout=0.0,
                 recurrent_dropout=0.0, return_sequences=False, return_state=False, go_backwards=False,
                 stateful=False, unroll=False, **kwargs):
        super().__init__(**kwargs)
        layer = type(self).__name__
        if not is_whole_number(units) or units < 1:
            raise ConfigError(f"{layer} units must be a whole number >= 1; got {units!r}.")
        units = int(units)
        # PyTorch's fused kernels compute exactly Keras's default cell; other choices have no kernel here.
        if activations.get(activation) is not activations.tanh or \
                activations.get(recurrent_activation) is not activations.sigmoid:
            raise ConfigError(f"{layer} supports activation='tanh' and recurrent_activation='sigmoid' (the Keras "
                              f"defaults); got {activation!r} and {recurrent_activation!r}.")
        unsupported = {"dropout": dropout, "recurrent_dropout": recurrent_dropout, "return_state": return_state,
                       "go_backwards": go_backwards, "stateful": stateful}
        given = [name for name, value in unsupported.items() if value]
        if given:
            hint = (" (for dropout, put a Dropout layer before or after the recurrent layer)"
                    if {"dropout", "recurrent_dropout"} & set(given) else "")
            raise ConfigError(f"{layer}: {', '.join(given)} is not supported yet; remove it{hint}.")
        self.units = units
        self.use_bias = bool(use_bias)
        self.return_sequences = bool(return_sequences)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.recurrent_initializer = initializers.get(recurrent_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = regularizers.get(recurrent_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self._runner = None

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ConfigError(f"{type(self).__name__} {self.name} takes inputs shaped (batch, timesteps, features) "
                              f"with known features; got {tuple(input_shape)}.")
        width = self.gates * self.units
        self.kernel = self._new_weight((input_shape[-1], width), self.kernel_initializer)
        self.recurrent_kernel = self._new_weight((self.units, width), self.recurrent_initializer)
        self.bias = self._new_weight(self._bias_shape(), self._initial_bias) if self.use_bias else None
        # PyTorch's module only runs the kernel: its weights live on the meta device (no memory, no random
        # draws) and are replaced on every call; a tuple keeps it out of this layer's parameters and saves.
        self._runner = (self.torch_class(input_shape[-1], self.units, bias=self.use_bias, batch_first=True,
                                         device="meta"),)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        if self.return_sequences:
            return (input_shape[0], input_shape[1], self.units)
        return (input_shape[0], self.units)

    def forward(self, x):
        if not x.is_floating_point():
            x = x.to(torch.float32)
        runner = self._runner[0]
        outputs, _ = functional_call(runner, self._torch_weights(), (x,))
        return outputs if self.return_sequences else outputs[:, -1]

    def _torch_weights(self) -> dict:
        raise NotImplementedError

    def _bias_shape(self) -> tuple:
        raise NotImplementedError

    def _initial_bias(self, shape):
        return self.bias_initializer(shape)

    def regularization_penalty(self):
        return weight_penalty((self.kernel_regularizer, self.kernel), (self.recurrent_regularizer,
                                                                       self.recurrent_kernel),
                              (self.bias_regularizer, self.bias))

    def get_config(self):
        return {**super().get_config(), "units": self.units, "use_bias": self.use_bias,
                "return_sequences": self.return_sequences,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "recurrent_initializer": initializers.serialize(self.recurrent_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "recurrent_regularizer": regularizers.serialize(self.recurrent_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer)}


class LSTM(_Recurrent):
    """Keras's LSTM; gate order input, forget, cell, output (PyTorch's order too)."""

    gates = 4
    torch_class = torch.nn.LSTM

    def __init__(self, units, unit_forget_bias=True, **kwargs):
        super().__init__(units, **kwargs)
        self.unit_forget_bias = bool(unit_forget_bias)

    def _bias_shape(self):
        return (4 * self.units,)

    def _initial_bias(self, shape):
        bias = self.bias_initializer(shape)
        if self.unit_forget_bias:  # Keras starts the forget gate open
            bias[self.units:2 * self.units] = 1.0
        return bias

    def _torch_weights(self):
        weights = {"weight_ih_l0": self.kernel.t(), "weight_hh_l0": self.recurrent_kernel.t()}
        if self.bias is not None:  # Keras has one bias; PyTorch adds two, so the second is zero
            weights.update(bias_ih_l0=self.bias, bias_hh_l0=torch.zeros_like(self.bias))
        return weights

    def get_config(self):
        return {**super().get_config(), "unit_forget_bias": self.unit_forget_bias}


class GRU(_Recurrent):
    """Keras's GRU with ``reset_after=True`` (its default, and PyTorch's formula).

    Keras orders the gates update (z), reset (r), candidate (h); PyTorch orders them r, z, n. The
    bias is ``(2, 3 * units)``: the input bias and the recurrent bias.
    """

    gates = 3
    torch_class = torch.nn.GRU

    def __init__(self, units, reset_after=True, **kwargs):
        if not reset_after:
            raise ConfigError("GRU supports reset_after=True (the Keras default, applied after the recurrent "
                              "product); reset_after=False has no PyTorch kernel here.")
        super().__init__(units, **kwargs)

    def _bias_shape(self):
        return (2, 3 * self.units)

    def _to_torch_gate_order(self, weight):
        z, r, h = weight.split(self.units, dim=-1)
        return torch.cat([r, z, h], dim=-1)

    def _torch_weights(self):
        weights = {"weight_ih_l0": self._to_torch_gate_order(self.kernel).t(),
                   "weight_hh_l0": self._to_torch_gate_order(self.recurrent_kernel).t()}
        if self.bias is not None:
            weights.update(bias_ih_l0=self._to_torch_gate_order(self.bias[0]),
                           bias_hh_l0=self._to_torch_gate_order(self.bias[1]))
        return weights

    def get_config(self):
        return {**super().get_config(), "reset_after": True}
