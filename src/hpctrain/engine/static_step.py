"""The static executor: a known stack of layers trained without building an autograd graph.

For a model made of linear layers, element-wise activations, dropout and residual sums around
them, trained with a loss whose gradient at the logits has a closed form, forward and backward
are a fixed sequence of PyTorch kernels writing into buffers allocated once. Per step that is
~13 kernel calls for a two-layer MLP, against ~40 for autograd plus its graph bookkeeping and the
optimizer's Python.
Gradients are checked against autograd in the tests (loss, gradients, updated weights).
"""

from __future__ import annotations

import torch

from hpctrain.engine.dropout import scaled_keep_mask
from hpctrain.engine.flat import move_parameters_end_to_end
from hpctrain.engine.losses import Loss
from hpctrain.engine.optim import fast_update, is_direct_fused_update
from hpctrain.engine.static_layers import (  # noqa: F401 (the layers are imported from here too)
    ACTIVATIONS,
    Activation,
    Dropout,
    Linear,
    ResidualAdd,
    ResidualStart,
    _output_gradient,
    static_layers_of,
    torch_sequential_layers,
    why_not_static,
)
from hpctrain.engine.static_program import (
    ACTIVATION,
    DROPOUT,
    LINEAR,
    RESIDUAL_ADD,
    RESIDUAL_START,
    _BatchBuffers,
    _folded_linears,
    _LinearParts,
    _ProgramWriter,
    previous_producers,
)
from hpctrain.hardware import gemm
from hpctrain.hardware.gemm import ONEDNN_MIN_MACS


class StaticStep:
    """Forward, backward and update for a stack of static layers; no autograd graph per step.

    Per-step Python is kept to the kernel calls themselves: per batch size, the forward and
    backward are one generated function (:class:`_ProgramWriter`) over buffers allocated once.
    """

    name = "static"

    def __init__(self, module, loss: Loss, optimizer: torch.optim.Optimizer, *, batch_size: int,
                 output_activation=None, communicator=None):
        self.layers = static_layers_of(module)
        self.output_gradient = _output_gradient(loss)
        self.output_activation = output_activation
        self.device = self.layers[0].weight.device
        self.communicator = communicator
        self.flat_grad = self._attach_gradient_buffers()
        self.kinds = [_KINDS[type(layer)] for layer in self.layers]
        self.parts = [_LinearParts(l) if isinstance(l, Linear) else _layer_callables(l) for l in self.layers]
        self.last_linear = max(i for i, kind in enumerate(self.kinds) if kind == LINEAR)
        self.output_width = self.layers[self.last_linear].out_features
        self.previous_producer = previous_producers(self.kinds)
        self.folded = _folded_linears(self.kinds, self.parts)
        self._with_ones_column = {self.previous_producer[index] for index in self.folded}
        self.in_features = self.parts[0].kernel.shape[0]
        # Batches may come with a column of ones appended (``ResidentData.batches(ones_column=True)``):
        # the first layer then takes its bias inside the GEMM like the others.
        self.input_ones_column = self.parts[0].foldable
        self.penalized = [layer for layer in self.layers if isinstance(layer, Linear) and layer.has_penalty]
        self.update = fast_update(optimizer)
        # A graph may replay the direct fused Adam call; optimizer.step() keeps Python-side state.
        self.update_is_capturable = is_direct_fused_update(self.update)
        self.handed = self._hand_gradients_to_update(batch_size)
        self.programs, self._sources, self._native = {}, {}, {}
        self._program_for((batch_size, self.in_features))
        self._guard_check = self._guard = None

    def guard_with(self, guard, optimizer) -> None:
        self._guard_check = guard.checker(self.update.grads if self.handed else [self.flat_grad])
        self.update = guard.guarded_update(self.update, optimizer)
        self._guard = guard

    def why_not_native(self) -> str | None:
        """``None`` where the C++ step loop (:mod:`hpctrain.engine.native`) can run this step, else why not."""
        reason = ("not on a CPU" if self.device.type != "cpu"
                  else "replicas average gradients between steps" if self.communicator is not None
                  else "weight penalties are added in Python" if self.penalized
                  else "only the fused Adam/AdamW update runs there" if not is_direct_fused_update(self.update)
                  else "the non-finite check skips steps" if self._guard is None or self._guard.skip_steps
                  else None)
        return reason or next((native.reason for native in self._native.values() if native.code is None), None)

    def run_many(self, loop, x: torch.Tensor, y: torch.Tensor, sizes, metrics) -> None:
        """Steps on consecutive batches of ``x``/``y``, ``sizes[k]`` rows each, by the C++ ``loop``.

        One call per run of equal sizes; the same kernels as :meth:`__call__`, and the logits go to
        the metrics as one slot per call."""
        update = self.update
        state = loop.state(update, self._guard, check_handed=bool(self.handed),
                           checked=[] if self.handed else [self.flat_grad])
        first = 0
        for rows, count in _runs_of_equal(sizes):
            last = first + rows * count
            xs, ys = x[first:last], y[first:last]
            first = last
            shape = torch.Size((rows, x.shape[1]))  # a batch's shape, without slicing a view for it
            native = self._native.get(shape) or self._native_for(shape)
            handed = loop(native, xs, ys, metrics.slot(rows * count, ys), [rows] * count, state)
            if self.handed:
                update.grads[:] = handed  # the same list object the Python step and the guard hold

    def _hand_gradients_to_update(self, batch_size: int) -> dict[int, int]:
        """``{layer: slot}``: layers whose weight gradient (with the bias row) oneDNN computes and
        the step hands to the Adam update as oneDNN's own tensor, in that slot of its list.

        Copying oneDNN's result into the flat gradient buffer was a read and a write of every
        weight gradient per step (0.18 s of a 2 s epoch for the 784-1024-1024-10 MLP). The flat
        buffer stays for everything else (replicas' all-reduce, penalties, other optimizers), so
        this is only done without those; ``.grad`` is brought up to date by :meth:`sync_gradients`.
        """
        if (self.device.type != "cpu" or gemm.large_product_linear() is None or self.communicator is not None
                or self.penalized or not is_direct_fused_update(self.update)):
            return {}
        candidates = [index for index, part in enumerate(self.parts)
                      if self.kinds[index] == LINEAR and part.foldable
                      and (index in self.folded or index == 0 and self.input_ones_column)
                      and batch_size * part.kernel_with_bias.numel() >= ONEDNN_MIN_MACS]
        if not candidates:
            return {}
        segments, slots, position = [], {}, 0
        base = self.flat_grad.storage_offset()
        for index in sorted(candidates, key=lambda i: self.parts[i].grad_with_bias.storage_offset()):
            view = self.parts[index].grad_with_bias
            start = view.storage_offset() - base
            if start > position:
                segments.append((position, (start - position,)))
            slots[index] = len(segments)
            segments.append((start, tuple(view.shape)))
            position = start + view.numel()
        if position < self.flat_grad.numel():
            segments.append((position, (self.flat_grad.numel() - position,)))
        return slots if self.update.split_into_segments(segments) else {}

    def sync_gradients(self) -> None:
        """Copies the gradients last handed to the update into ``.grad`` (once, not per step)."""
        with torch.no_grad():
            for index, slot in self.handed.items():
                view, handed = self.parts[index].grad_with_bias, self.update.grads[slot]
                if handed is not view:
                    view.copy_(handed)

    def source(self, rows: int, *, ones_column: bool = False) -> str:
        """The generated forward and backward for batches of ``rows`` (with a column of ones)."""
        shape = torch.Size((rows, self.in_features + ones_column))
        self._program_for(shape)
        return self._sources[shape]

    def products(self, rows: int) -> tuple[int, int]:
        """How many of a step's matrix products on shuffled batches of ``rows`` run on oneDNN, and
        how many there are (GEMMs and bias-gradient GEMVs)."""
        source = self.source(rows, ones_column=self.input_ones_column)
        onednn = source.count("onednn(")
        return onednn, onednn + source.count("mm(") + source.count("addmv(")

    def _program_for(self, shape):
        """The program for batches shaped ``shape``; the batch's shape is the key, as it tells the
        row count and whether the ones column is there."""
        shape = torch.Size(shape)
        program = self.programs.get(shape)
        if program is None:
            rows, with_ones = shape[0], shape[-1] == self.in_features + 1 and self.input_ones_column
            buffers = _BatchBuffers(self.layers, rows, self.device, self._with_ones_column)
            writer = _ProgramWriter(self, buffers, with_ones)
            source, names = writer.write()
            exec(compile(source, f"<static step, {tuple(shape)}>", "exec"), names)  # text written by _ProgramWriter
            program = self.programs[shape] = names["step"]
            self._sources[shape], self._native[shape] = source, writer.native
        return program

    def _native_for(self, shape):
        self._program_for(shape)
        return self._native[torch.Size(shape)]

    def _attach_gradient_buffers(self) -> torch.Tensor:
        """Every ``.grad`` a view into one flat buffer, which the backward writes straight into.

        No allocation or zeroing per step, and replicas average all gradients with one all-reduce.
        """
        params = [p for layer in self.layers if isinstance(layer, Linear) for p in (layer.weight, layer.bias)
                  if p is not None]
        move_parameters_end_to_end(params)  # before any detached view of them is taken
        flat = torch.zeros(sum(p.numel() for p in params), device=self.device)
        offset = 0
        for param in params:
            param.grad = flat[offset:offset + param.numel()].view_as(param)
            offset += param.numel()
        return flat

    def __call__(self, x: torch.Tensor, y: torch.Tensor, metrics, batch_rows: int | None = None) -> None:
        shape = x.shape
        n = shape[0]
        program = self.programs.get(shape) or self._program_for(shape)
        program(x, y, metrics.slot(n, y), n if batch_rows is None else batch_rows)
        if self.communicator is not None:
            # One all-reduce of the one flat gradient buffer: no autograd hooks for DDP to use, and
            # 1.85x DDP's samples/s in benchmarks/results/data_parallel_seed_sync.json.
            self.communicator.all_reduce_sum_(self.flat_grad)  # sync point: every replica waits here
        if self.penalized:  # after the reduction: each replica adds the same penalty gradient once
            with torch.no_grad():
                metrics.add_penalty(self._penalty_and_gradient(), n)
        if self._guard_check is not None:
            self._guard_check()
        self.update()

    def _penalty_and_gradient(self) -> torch.Tensor:
        total = None
        for layer in self.penalized:
            for param, l1, l2 in ((layer.weight, layer.l1, layer.l2), (layer.bias, layer.bias_l1, layer.bias_l2)):
                if param is None or not (l1 or l2):
                    continue
                term = _add_penalty_gradient(param, l1, l2)
                total = term if total is None else total + term
        return total


class _DropoutPart:
    """Forward ``(output, mask)`` and backward, with the mask the autograd executor would draw."""

    __slots__ = ("rate", "scale", "torch_mask")

    def __init__(self, layer: Dropout):
        self.rate = layer.rate
        self.scale = 1.0 / (1.0 - layer.rate)
        self.torch_mask = layer.torch_mask

    def __call__(self, a):
        if not self.rate:
            return a, None
        if self.torch_mask:  # the same mask from the same RNG state as F.dropout
            return torch.native_dropout(a, self.rate, True)
        mask = scaled_keep_mask(a, self.rate)
        return a * mask, mask

    def backward(self, grad, mask):
        if self.torch_mask:
            return torch.ops.aten.native_dropout_backward(grad, mask, self.scale)
        return grad.mul_(mask)  # the incoming gradient buffer is not read again


_KINDS = {Linear: LINEAR, Activation: ACTIVATION, Dropout: DROPOUT, ResidualStart: RESIDUAL_START,
          ResidualAdd: RESIDUAL_ADD}


def _layer_callables(layer):
    if isinstance(layer, Activation):
        return ACTIVATIONS[layer.name]
    return _DropoutPart(layer) if isinstance(layer, Dropout) else None


def _runs_of_equal(sizes):
    """``(size, count)`` of each run of equal sizes, in order: ``[32, 32, 8]`` -> ``(32, 2), (8, 1)``."""
    runs = []
    for size in sizes:
        if runs and runs[-1][0] == size:
            runs[-1][1] += 1
        else:
            runs.append([size, 1])
    return runs


def _add_penalty_gradient(param, l1: float, l2: float) -> torch.Tensor:
    value = param.new_zeros(())
    if l1:
        value = value + l1 * param.abs().sum()
        param.grad.add_(param.sign(), alpha=l1)
    if l2:
        value = value + l2 * param.square().sum()
        param.grad.add_(param, alpha=2.0 * l2)
    return value
