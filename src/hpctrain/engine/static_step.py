"""The static executor: a known stack of layers trained without building an autograd graph.

For a model made of linear layers, element-wise activations and dropout, trained with a loss
whose gradient at the logits has a closed form, forward and backward are a fixed sequence of
PyTorch kernels writing into buffers allocated once. Per step that is ~13 kernel calls for a
two-layer MLP, against ~40 for autograd plus its graph bookkeeping and the optimizer's Python.
Gradients are checked against autograd in the tests (loss, gradients, updated weights).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from hpctrain.engine.dropout import scaled_keep_mask
from hpctrain.engine.flat import flat_view, move_parameters_end_to_end
from hpctrain.engine.native import code as native_code
from hpctrain.engine.losses import BinaryCrossentropy, CrossEntropy, Loss, MeanAbsoluteError, MeanSquaredError
from hpctrain.engine.optim import fast_update, is_direct_fused_update
from hpctrain.hardware.gemm import ONEDNN_MIN_MACS, onednn_linear

# ---- what the executor understands ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Linear:
    """``x @ W + b``; ``transposed`` for PyTorch's ``(out, in)`` weights, else Keras's ``(in, out)``."""

    weight: torch.nn.Parameter
    bias: torch.nn.Parameter | None
    transposed: bool
    l1: float = 0.0
    l2: float = 0.0
    bias_l1: float = 0.0
    bias_l2: float = 0.0

    @property
    def out_features(self) -> int:
        return self.weight.shape[0] if self.transposed else self.weight.shape[1]

    def kernel(self) -> torch.Tensor:
        """The weight as ``(in, out)``; a transposed view costs nothing."""
        return self.weight.t() if self.transposed else self.weight

    @property
    def has_penalty(self) -> bool:
        return bool(self.l1 or self.l2 or self.bias_l1 or self.bias_l2)


@dataclasses.dataclass(frozen=True)
class Activation:
    name: str  # one of ACTIVATIONS


@dataclasses.dataclass(frozen=True)
class Dropout:
    rate: float
    # ``torch.nn.Dropout``'s mask (``native_dropout``), so that the step drops what autograd would;
    # otherwise the cheaper uniform mask of ``engine.dropout``, which hpctrain's layers draw.
    torch_mask: bool = False


# In-place forward, and backward from the activation's *output*, so z need not be kept.
# The backward overwrites the incoming gradient buffer: it is not read again, and no allocation.
ACTIVATIONS = {
    "relu": (torch.Tensor.relu_,
             lambda grad, out: torch.ops.aten.threshold_backward.grad_input(grad, out, 0.0, grad_input=grad)),
    "tanh": (torch.Tensor.tanh_, lambda grad, out: torch.ops.aten.tanh_backward.grad_input(grad, out, grad_input=grad)),
    "sigmoid": (torch.Tensor.sigmoid_,
                lambda grad, out: torch.ops.aten.sigmoid_backward.grad_input(grad, out, grad_input=grad)),
}


def torch_sequential_layers(module: torch.nn.Module):
    """Static layers of a plain ``nn.Sequential`` of Linear/ReLU/Tanh/Sigmoid/Identity/Dropout."""
    if not isinstance(module, torch.nn.Sequential):
        return None
    names = {torch.nn.ReLU: "relu", torch.nn.Tanh: "tanh", torch.nn.Sigmoid: "sigmoid"}
    layers = []
    for child in module:
        if type(child) is torch.nn.Linear:
            layers.append(Linear(child.weight, child.bias, transposed=True))
        elif type(child) in names:
            layers.append(Activation(names[type(child)]))
        elif type(child) is torch.nn.Dropout:
            layers.append(Dropout(child.p, torch_mask=True))
        elif type(child) is not torch.nn.Identity:
            return None
    return layers


def static_layers_of(module: torch.nn.Module):
    """The module's layers as static primitives, or ``None`` when some layer is not one."""
    if hasattr(module, "static_layers"):
        return module.static_layers()
    return torch_sequential_layers(module)


def why_not_static(module, loss: Loss) -> str | None:
    """``None`` when the static executor can run this model and loss, else the reason it cannot."""
    layers = static_layers_of(module)
    if layers is None:
        return "some layer has no backward the engine knows"
    if any(not p.requires_grad for layer in layers if isinstance(layer, Linear)
           for p in (layer.weight, layer.bias) if p is not None):
        return "some weights are frozen"
    if not layers or not isinstance(layers[-1], Linear):
        return "the model does not end in a linear layer"
    if any(isinstance(layer, Activation) and layer.name not in ACTIVATIONS for layer in layers):
        return "an activation has no backward the engine knows"
    if _output_gradient(loss) is None:
        return f"the loss {loss.name} has no closed-form gradient here"
    if not isinstance(layers[0], Linear):
        return "the model does not start with a linear layer"
    return None


# ---- the loss gradient at the logits ---------------------------------------------------------


def _output_gradient(loss: Loss):
    """``fn(z, target, out, minus_ones, rows)`` writing ``c * d(mean loss)/dz`` into ``out``; returns ``1/c``.

    The factor ``1/c`` (``1/rows`` for cross-entropy) is applied as the ``alpha`` of the weight- and
    bias-gradient GEMMs rather than by a separate scaling kernel over the output gradient.
    ``rows`` is the *global* batch's row count: each replica divides by it, so summing the
    replicas' gradients gives the gradient of the mean loss over the global batch.
    """
    if isinstance(loss, CrossEntropy) and loss.from_logits:
        return _cross_entropy_gradient
    if isinstance(loss, BinaryCrossentropy) and loss.from_logits:
        return _binary_cross_entropy_gradient
    if isinstance(loss, MeanSquaredError):
        return _squared_error_gradient
    if isinstance(loss, MeanAbsoluteError):
        return _absolute_error_gradient
    return None


def _cross_entropy_gradient(z, target, out, minus_ones, rows) -> float:
    torch.softmax(z, dim=1, out=out)
    if target.dtype == torch.int64:
        # softmax - one_hot in one call; scatter_add is also safe inside a CUDA graph capture.
        out.scatter_add_(1, target.unsqueeze(1), minus_ones)
    else:
        out.sub_(target)
    return 1.0 / rows


def _binary_cross_entropy_gradient(z, target, out, minus_ones, rows) -> float:
    torch.sigmoid(z, out=out).sub_(target)
    return 1.0 / (rows * _width(z))


def _squared_error_gradient(z, target, out, minus_ones, rows) -> float:
    torch.sub(z, target, out=out)
    return 2.0 / (rows * _width(z))


def _absolute_error_gradient(z, target, out, minus_ones, rows) -> float:
    torch.sub(z, target, out=out).sign_()
    return 1.0 / (rows * _width(z))


def _width(z: torch.Tensor) -> int:
    return math.prod(z.shape[1:])


_NATIVE_LOSS_KINDS = {_cross_entropy_gradient: native_code.CROSS_ENTROPY,
                      _binary_cross_entropy_gradient: native_code.BINARY_CROSS_ENTROPY,
                      _squared_error_gradient: native_code.SQUARED_ERROR,
                      _absolute_error_gradient: native_code.ABSOLUTE_ERROR}


# ---- the step --------------------------------------------------------------------------------


LINEAR, ACTIVATION, DROPOUT = 0, 1, 2


class _LinearParts:
    """A linear layer's tensors, detached once: ops on them record no autograd graph.

    ``kernel_with_bias`` (and ``grad_with_bias``) is the ``(in + 1, out)`` view of kernel and bias
    together: Keras's ``(in, out)`` kernel followed by its bias in the flat buffer is exactly that
    matrix. Where the layer's input carries a column of ones, one GEMM is both ``x @ W + b`` and,
    backward, both gradients: no bias add and no bias-gradient GEMV for the layer.
    """

    __slots__ = ("kernel", "kernel_t", "bias", "weight_grad", "bias_grad", "transposed", "kernel_with_bias",
                 "grad_with_bias")

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
    """Linear layers whose input is a buffer of the step's own with only in-place activations
    between: that buffer can carry the ones column. The first layer's input is the batch itself."""
    folded, previous = set(), None
    for index, kind in enumerate(kinds):
        if kind == LINEAR:
            if previous is not None and parts[index].foldable:
                folded.add(index)
            previous = index
        elif kind == DROPOUT and parts[index].rate:
            previous = None  # dropout writes a new tensor
    return folded


class _BatchBuffers:
    """Every buffer one batch size needs, allocated once; the last, partial batch gets its own set."""

    def __init__(self, layers, rows: int, device: torch.device, with_ones_column=()):
        self.rows = rows
        self.outputs, self.augmented = [], {}
        for index, layer in enumerate(layers):
            if not isinstance(layer, Linear):
                self.outputs.append(None)
            elif index in with_ones_column:
                self.augmented[index] = torch.ones(rows, layer.out_features + 1, device=device)
                self.outputs.append(self.augmented[index][:, :layer.out_features])
            else:
                self.outputs.append(torch.empty(rows, layer.out_features, device=device))
        self.grads = [torch.empty(rows, layer.out_features, device=device) if isinstance(layer, Linear) else None
                      for layer in layers]
        self.minus_ones = torch.full((rows, 1), -1.0, device=device)
        self.ones = torch.ones(rows, device=device)  # bias gradients as a GEMV: sum and scale in one call


class _ProgramWriter:
    """Writes the step for one batch size as straight-line Python, one line per kernel call.

    Walking the layer list per step (kinds, buffers, transposes) cost ~15 us of interpreter time
    on the seed MLP; the generated function does only the calls, with every tensor it touches
    bound once as a global of its own. ``StaticStep.source(rows)`` shows it.
    """

    def __init__(self, step: "StaticStep", buffers: _BatchBuffers, input_with_ones: bool):
        self.step, self.buffers, self.input_with_ones = step, buffers, input_with_ones
        self.onednn = onednn_linear() if step.device.type == "cpu" else None
        self.names = {"mm": torch.mm, "addmm": torch.addmm, "addmv": torch.addmv, "mul": torch.mul,
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
                a = out
                augmented = buffers.augmented.get(index)
                a_with_ones = None if augmented is None else self.bind(f"OB{index}", augmented)
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
        grad = "G_out"
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
                previous = step.previous_linear[index]
                new_grad = self.bind(f"G{previous}", buffers.grads[previous])
                self._gemm(new_grad, grad, self.bind(f"KT{index}", part.kernel_t), macs)
                grad = new_grad
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
        self.kinds = [LINEAR if isinstance(l, Linear) else ACTIVATION if isinstance(l, Activation) else DROPOUT
                      for l in self.layers]
        self.parts = [_LinearParts(l) if isinstance(l, Linear) else _layer_callables(l) for l in self.layers]
        self.last_linear = max(i for i, kind in enumerate(self.kinds) if kind == LINEAR)
        self.output_width = self.layers[self.last_linear].out_features
        linear_indices = [i for i, kind in enumerate(self.kinds) if kind == LINEAR]
        self.previous_linear = dict(zip(linear_indices[1:], linear_indices[:-1]))
        self.folded = _folded_linears(self.kinds, self.parts)
        self._with_ones_column = {self.previous_linear[index] for index in self.folded}
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
        update, guard = self.update, self._guard
        group = update.optimizer.param_groups[0]
        beta1, beta2 = group["betas"]
        options = (float(group["lr"]), beta1, beta2, group["weight_decay"], group["eps"], update.decoupled)
        checked = [] if self.handed else [self.flat_grad]
        first = 0
        for rows, count in _runs_of_equal(sizes):
            last = first + rows * count
            xs, ys = x[first:last], y[first:last]
            first = last
            shape = torch.Size((rows, x.shape[1]))  # a batch's shape, without slicing a view for it
            native = self._native.get(shape) or self._native_for(shape)
            handed = loop(native.table, native.code, xs, ys, metrics.slot(rows * count, ys), [rows] * count,
                          update.params, update.grads, update.exp_avgs, update.exp_avg_sqs, update.steps,
                          update.counters, guard.found_inf, guard.one, guard.bad_steps, bool(self.handed), checked,
                          *options)
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
        if (self.device.type != "cpu" or onednn_linear() is None or self.communicator is not None
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


def _layer_callables(layer):
    return ACTIVATIONS[layer.name] if isinstance(layer, Activation) else _DropoutPart(layer)


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
