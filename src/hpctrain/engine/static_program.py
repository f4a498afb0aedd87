"""The static step's program for one batch size: its buffers, allocated once, and the straight-line
Python of its kernel calls (:class:`_ProgramWriter`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from hpctrain.engine.flat import flat_view
from hpctrain.engine.native import code as native_code
from hpctrain.engine.static_layers import _NATIVE_LOSS_KINDS, Linear, ResidualAdd
from hpctrain.hardware import gemm
from hpctrain.hardware.gemm import ONEDNN_MIN_MACS

if TYPE_CHECKING:
    from hpctrain.engine.static_step import StaticStep

LINEAR, ACTIVATION, DROPOUT, RESIDUAL_START, RESIDUAL_ADD = 0, 1, 2, 3, 4


class _LinearParts:
    """A linear layer's tensors, detached once: ops on them record no autograd graph.

    ``kernel_with_bias`` (and ``grad_with_bias``) is the ``(in + 1, out)`` view of kernel and bias
    together: Keras's ``(in, out)`` kernel followed by its bias in the flat buffer is exactly that
    matrix. Where the layer's input carries a column of ones, one GEMM is both ``x @ W + b`` and,
    backward, both gradients: no bias add and no bias-gradient GEMV for the layer.
    """

    __slots__ = (
        "bias",
        "bias_grad",
        "grad_with_bias",
        "kernel",
        "kernel_t",
        "kernel_with_bias",
        "transposed",
        "weight_grad",
    )

    def __init__(self, layer: Linear):
        weight = layer.weight.detach()
        self.transposed = layer.transposed
        self.kernel = weight.t() if layer.transposed else weight  # (in, out)
        self.kernel_t = self.kernel.t()
        self.bias = None if layer.bias is None else layer.bias.detach()
        self.weight_grad = layer.weight.grad
        self.bias_grad = None if layer.bias is None else layer.bias.grad
        self.kernel_with_bias = self._stacked(self.kernel, self.bias)
        self.grad_with_bias = self._stacked(self.weight_grad, self.bias_grad)

    def _stacked(self, kernel, bias):
        if self.transposed or bias is None:
            return None
        flat = flat_view([kernel, bias])
        return None if flat is None else flat.view(kernel.shape[0] + 1, kernel.shape[1])

    @property
    def foldable(self) -> bool:
        return self.kernel_with_bias is not None and self.grad_with_bias is not None


def _folded_linears(kinds, parts) -> set[int]:
    """Linear layers whose input is a buffer of the step's own (a linear layer's output or a
    residual sum) with only in-place activations between: that buffer can carry the ones column.
    The first layer's input is the batch itself."""
    folded, previous = set(), None
    for index, kind in enumerate(kinds):
        if kind == LINEAR:
            if previous is not None and parts[index].foldable:
                folded.add(index)
            previous = index
        elif kind == RESIDUAL_ADD:
            previous = index
        elif kind == DROPOUT and parts[index].rate:
            previous = None  # dropout writes a new tensor
    return folded


def previous_producers(kinds) -> dict[int, int]:
    """``{linear layer: the layer before it that wrote its input's buffer}`` (a linear layer or a
    residual sum); the backward writes the gradient for that input into that layer's buffer."""
    producers, last = {}, None
    for index, kind in enumerate(kinds):
        if kind == LINEAR and last is not None:
            producers[index] = last
        if kind in (LINEAR, RESIDUAL_ADD):
            last = index
    return producers


class _BatchBuffers:
    """Every buffer one batch size needs, allocated once; the last, partial batch gets its own set."""

    def __init__(self, layers, rows: int, device: torch.device, with_ones_column=()):
        self.rows = rows
        self.outputs, self.augmented, self.grads, self.branch_grads = [], {}, [], {}
        width = None
        for index, layer in enumerate(layers):
            if isinstance(layer, Linear):
                width = layer.out_features
            elif not isinstance(layer, ResidualAdd):
                self.outputs.append(None)
                self.grads.append(None)
                continue
            if index in with_ones_column:
                self.augmented[index] = torch.ones(rows, width + 1, device=device)
                self.outputs.append(self.augmented[index][:, :width])
            else:
                self.outputs.append(torch.empty(rows, width, device=device))
            self.grads.append(torch.empty(rows, width, device=device))
            if isinstance(layer, ResidualAdd):  # the branch's copy of the sum's gradient
                self.branch_grads[index] = torch.empty(rows, width, device=device)
        self.minus_ones = torch.full((rows, 1), -1.0, device=device)
        self.ones = torch.ones(rows, device=device)  # bias gradients as a GEMV: sum and scale in one call


class _ProgramWriter:
    """Writes the step for one batch size as straight-line Python, one line per kernel call.

    Walking the layer list per step (kinds, buffers, transposes) cost ~15 us of interpreter time
    on the seed MLP; the generated function does only the calls, with every tensor it touches
    bound once as a global of its own. ``StaticStep.source(rows)`` shows it.
    """

    def __init__(self, step: StaticStep, buffers: _BatchBuffers, input_with_ones: bool):
        self.step, self.buffers, self.input_with_ones = step, buffers, input_with_ones
        self.onednn = gemm.large_product_linear() if step.device.type == "cpu" else None
        self.names = {"mm": torch.mm, "addmm": torch.addmm, "addmv": torch.addmv, "mul": torch.mul, "add": torch.add,
                      "onednn": self.onednn, "output_gradient": step.output_gradient,
                      "handed": step.update.grads if step.handed else None}
        self.lines = []
        self.native = native_code.NativeCode(buffers.outputs[step.last_linear])
        self.bind("minus_ones", buffers.minus_ones)
        self.bind("ones", buffers.ones)

    def bind(self, name: str, value) -> str:
        self.names[name] = value
        if isinstance(value, torch.Tensor):
            self.native.bind(name, value)
        return name

    def write(self) -> tuple[str, dict]:
        saved = self._forward()
        grad = self.bind("G_out", self.buffers.grads[self.step.last_linear])
        self.lines.append(f"scale = output_gradient(z, y, {grad}, minus_ones, rows)")
        self.native.emit(native_code.LOSS_GRADIENT, _NATIVE_LOSS_KINDS[self.step.output_gradient], "z", "y",
                         grad, "minus_ones")
        if self.step.handed:  # a handed gradient is oneDNN's result as it is: no scaled copy of it
            self.lines += [f"{grad}.mul_(scale)", "scale = 1.0"]
            self.native.emit(native_code.SCALE_GRADIENT, grad)
        self._backward(saved)
        body = "\n".join("    " + line for line in self.lines)
        return f"def step(x, y, logits_out, rows):\n{body}\n", self.names

    def _forward(self) -> list:
        """Emits the forward; per layer, the name of what its backward needs (input, output or mask)."""
        step, buffers, lines = self.step, self.buffers, self.lines
        saved, a, a_with_ones = [], "x", "x" if self.input_with_ones else None
        kept = []  # the inputs of the open residual branches, innermost last
        for index, (kind, part) in enumerate(zip(step.kinds, step.parts)):
            folded = a_with_ones is not None and (index in step.folded or index == 0)
            if kind == LINEAR:
                saved.append((a, a_with_ones if folded else None))
                if index == step.last_linear:
                    out = "z"
                    lines.append(f"z = {self.bind(f'O{index}', buffers.outputs[index])} if logits_out is None "
                                 "else logits_out")
                else:
                    out = self.bind(f"O{index}", buffers.outputs[index])
                macs = self.buffers.rows * part.kernel.shape[0] * part.kernel.shape[1]
                if folded:
                    self._gemm(out, a_with_ones, self.bind(f"KB{index}", part.kernel_with_bias), macs)
                elif part.bias is None:
                    self._gemm(out, a, self.bind(f"K{index}", part.kernel), macs)
                else:
                    self._gemm(out, a, self.bind(f"K{index}", part.kernel), macs, bias=self.bind(f"B{index}", part.bias))
                a, a_with_ones = out, self._with_ones(index)
            elif kind == RESIDUAL_START:
                kept.append(a)
                saved.append(None)
            elif kind == RESIDUAL_ADD:
                out = self.bind(f"O{index}", buffers.outputs[index])
                lines.append(f"add({a}, {kept[-1]}, out={out})")
                self.native.emit(native_code.ADD, out, a, kept.pop())
                a, a_with_ones = out, self._with_ones(index)
                saved.append(None)
            elif kind == ACTIVATION:
                lines.append(f"{self.bind(f'act{index}', part[0])}({a})")  # in place
                self.native.emit(native_code.ACTIVATION, native_code.ACTIVATION_KINDS[step.layers[index].name], a)
                saved.append(a)
            elif part.rate:
                lines.append(f"d{index}, mask{index} = {self.bind(f'dropout{index}', part)}({a})")
                self.native.per_step(f"d{index}", f"mask{index}")
                self.native.emit(native_code.DROPOUT, f"d{index}", f"mask{index}", a, int(part.torch_mask),
                                 native_code.Real(part.rate))
                a, a_with_ones = f"d{index}", None
                saved.append(f"mask{index}")
            else:
                saved.append(None)
        return saved

    def _with_ones(self, index: int) -> str | None:
        """The name of layer ``index``'s output with its column of ones, where it has one."""
        augmented = self.buffers.augmented.get(index)
        return None if augmented is None else self.bind(f"OB{index}", augmented)

    def _gemm(self, out: str, left: str, right: str, macs: int, *, bias: str | None = None,
              scaled: bool = False) -> None:
        """Emits ``out = left @ right (+ bias)`` (times ``scale`` where ``scaled``): with PyTorch's
        BLAS (MKL) into ``out`` directly, or for a large product with oneDNN's matmul, which
        returns a new tensor, then copied (or scaled) into ``out``; see :mod:`hpctrain.hardware.gemm`."""
        native = self.native
        if self.onednn is None or macs < ONEDNN_MIN_MACS:
            if scaled:
                self.lines.append(f"addmm({out}, {left}, {right}, beta=0, alpha=scale, out={out})")
                native.emit(native_code.ADDMM_SCALED, out, left, right)
            elif bias is not None:
                self.lines.append(f"addmm({bias}, {left}, {right}, out={out})")
                native.emit(native_code.ADDMM_BIAS, out, bias, left, right)
            else:
                self.lines.append(f"mm({left}, {right}, out={out})")
                native.emit(native_code.MM, out, left, right)
            return
        # oneDNN's linear multiplies by its weight's transpose: right.T is the weight.
        weight = self._transposed(right)
        product = f"onednn({left}, {weight}, {bias or 'None'}, 'none', [], '')"
        self.lines.append(f"mul({product}, scale, out={out})" if scaled else f"{out}.copy_({product})")
        if scaled:
            native.emit(native_code.ONEDNN_SCALED, out, left, weight)
        else:
            native.emit(native_code.ONEDNN_COPY, out, left, weight, bias)

    def _backward(self, saved) -> None:
        """Emits the backward. The output gradient is carried unscaled; ``scale`` is folded into each
        parameter gradient's GEMM/GEMV as its alpha (beta=0: the old contents are ignored)."""
        step, buffers, lines = self.step, self.buffers, self.lines
        grad, sums = "G_out", []  # sums: the gradients of the open residual sums, innermost last
        for index in range(len(step.kinds) - 1, -1, -1):
            kind, part = step.kinds[index], step.parts[index]
            if kind == LINEAR:
                grad_t = self._transposed(grad)
                inputs, inputs_with_ones = saved[index]
                macs = buffers.rows * part.kernel.shape[0] * part.kernel.shape[1]
                slot = step.handed.get(index)
                if inputs_with_ones is not None:
                    self._weight_gradient(f"GWB{index}", part.grad_with_bias, inputs_with_ones, grad, slot)
                else:
                    if part.transposed:
                        gw = self.bind(f"GW{index}", part.weight_grad)
                        self._gemm(gw, grad_t, inputs, macs, scaled=True)
                    else:
                        self._weight_gradient(f"GW{index}", part.weight_grad, inputs, grad)
                    if part.bias_grad is not None:
                        gb = self.bind(f"GB{index}", part.bias_grad)
                        lines.append(f"addmv({gb}, {grad_t}, ones, beta=0, alpha=scale, out={gb})")
                        self.native.emit(native_code.ADDMV_SCALED, gb, grad_t, "ones")
                    if slot is not None:  # a batch without the ones column: the gradient stays in the buffer
                        lines.append(f"handed[{slot}] = {self.bind(f'GWB{index}', part.grad_with_bias)}")
                        self.native.emit(native_code.HAND, native_code.Number(slot), f"GWB{index}")
                if index == 0:
                    return
                previous = step.previous_producer[index]
                new_grad = self.bind(f"G{previous}", buffers.grads[previous])
                self._gemm(new_grad, grad, self.bind(f"KT{index}", part.kernel_t), macs)
                grad = new_grad
            elif kind == RESIDUAL_ADD:  # the branch's backward works in place on a copy of the sum's gradient
                branch = self.bind(f"GR{index}", buffers.branch_grads[index])
                lines.append(f"{branch}.copy_({grad})")
                self.native.emit(native_code.COPY, branch, grad)
                sums.append(grad)
                grad = branch
            elif kind == RESIDUAL_START:  # the kept input's gradient: through the branch plus the sum's own
                lines.append(f"{grad}.add_({sums[-1]})")
                self.native.emit(native_code.ADD_TO, grad, sums.pop())
            elif kind == ACTIVATION:
                lines.append(f"{self.bind(f'act_backward{index}', part[1])}({grad}, {saved[index]})")
                self.native.emit(native_code.ACTIVATION_BACKWARD,
                                 native_code.ACTIVATION_KINDS[step.layers[index].name], grad, saved[index])
            elif saved[index] is not None:
                lines.append(f"g{index} = dropout{index}.backward({grad}, {saved[index]})")
                self.native.per_step(f"g{index}")
                self.native.emit(native_code.DROPOUT_BACKWARD, f"g{index}", grad, saved[index], int(part.torch_mask),
                                 native_code.Real(part.scale))
                grad = f"g{index}"

    def _weight_gradient(self, name: str, tensor, inputs: str, grad: str, slot: int | None = None) -> None:
        """``inputs.T @ grad * scale`` into an ``(in, out)`` gradient. For a tensor made per step (the
        batch, a dropout's output), ``grad.T @ inputs`` into the gradient's transposed view: the
        same product with no ``.t()`` call per step. With a ``slot``, the gradient is handed to
        the update there: oneDNN's result itself where oneDNN computes it, else the buffer."""
        macs = self.buffers.rows * tensor.shape[0] * tensor.shape[1]
        if slot is not None and self.onednn is not None and macs >= ONEDNN_MIN_MACS:
            left, right = self._transposed(inputs), self._transposed(grad)
            self.lines.append(f"handed[{slot}] = onednn({left}, {right}, None, 'none', [], '')")
            self.native.emit(native_code.ONEDNN_HAND, native_code.Number(slot), left, right)
            return
        if slot is not None:
            self.lines.append(f"handed[{slot}] = {self.bind(name, tensor)}")  # the product below fills it
            self.native.emit(native_code.HAND, native_code.Number(slot), name)
        if inputs in self.names:
            gw = self.bind(name, tensor)
            self._gemm(gw, self._transposed(inputs), grad, macs, scaled=True)
        else:
            gw_t = self.bind(f"{name}_t", tensor.t())
            self._gemm(gw_t, self._transposed(grad), inputs, macs, scaled=True)

    def _transposed(self, name: str) -> str:
        """A transposed view bound once for a buffer; ``.t()`` per step (~0.7 us) for a tensor made
        per step (the batch, a dropout's output)."""
        if name not in self.names:
            return f"{name}.t()"
        return self.bind(f"{name}_t", self.names[name].t())
