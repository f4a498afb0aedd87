"""The layers the static executor understands, and the loss gradients it computes in closed form.

A model whose layers read as these primitives (linear layers, element-wise activations, dropout,
residual branches around them) and whose loss has a closed-form gradient at the logits trains on
the static step (:mod:`hpctrain.engine.static_step`).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from hpctrain.engine.losses import (
    BinaryCrossentropy,
    CrossEntropy,
    Loss,
    MeanAbsoluteError,
    MeanSquaredError,
)
from hpctrain.engine.native import code as native_code

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
    # otherwise the cheaper mask of ``engine.dropout``, which hpctrain's layers draw.
    torch_mask: bool = False


@dataclasses.dataclass(frozen=True)
class ResidualStart:
    """Where a residual branch begins: its input is kept, to be added to the branch's output."""


@dataclasses.dataclass(frozen=True)
class ResidualAdd:
    """The branch's output plus the input kept by the innermost open :class:`ResidualStart`."""


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
    """Static layers of an ``nn.Sequential`` of Linear/ReLU/Tanh/Sigmoid/Identity/Dropout and of
    modules of the user's own whose forward reads as linear layers, activations and a residual
    sum (:func:`~hpctrain.engine.traced_layers.trace_module`)."""
    return _read_torch_sequential(module)[0]


def _read_torch_sequential(module: torch.nn.Module) -> tuple[list | None, str]:
    """``(layers, "")``, or ``(None, which child is not a static layer and why)``."""
    # Imported here: traced_layers builds on this module's primitives.
    from hpctrain.engine.traced_layers import trace_module

    if not isinstance(module, torch.nn.Sequential):
        return None, ""
    names = {torch.nn.ReLU: "relu", torch.nn.Tanh: "tanh", torch.nn.Sigmoid: "sigmoid"}
    layers, width = [], None
    for position, child in enumerate(module):
        if type(child) is torch.nn.Linear:
            layers.append(Linear(child.weight, child.bias, transposed=True))
        elif type(child) in names:
            layers.append(Activation(names[type(child)]))
        elif type(child) is torch.nn.Dropout:
            layers.append(Dropout(child.p, torch_mask=True))
        elif type(child) is not torch.nn.Identity:
            traced, why = ((None, "no static form")
                           if type(child).__module__.startswith("torch.") else trace_module(child, width))
            if traced is None:
                return None, f"layer {position} ({type(child).__name__}): {why}"
            layers += traced
        width = next((layer.out_features for layer in reversed(layers) if isinstance(layer, Linear)), None)
    return layers, ""


def static_layers_of(module: torch.nn.Module):
    """The module's layers as static primitives, or ``None`` when some layer is not one."""
    if hasattr(module, "static_layers"):
        return module.static_layers()
    return torch_sequential_layers(module)


def _why_not_static_layers(module) -> str:
    """Which layer is not a static primitive and why, where the module can say ("" elsewhere)."""
    if hasattr(module, "why_not_static_layers"):
        return module.why_not_static_layers()
    return _read_torch_sequential(module)[1]


def why_not_static(module, loss: Loss) -> str | None:
    """``None`` when the static executor can run this model and loss, else the reason it cannot."""
    layers = static_layers_of(module)
    if layers is None:
        which = _why_not_static_layers(module)
        return "some layer has no backward the engine knows" + (f": {which}" if which else "")
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
    return _why_residuals_not_static(layers)


def _why_residuals_not_static(layers) -> str | None:
    """Each residual branch must start with a linear layer (an in-place activation there would
    overwrite the input kept for the sum) and keep its input's width (no broadcast in the sum)."""
    kept, width = [], layers[0].kernel().shape[0]
    for index, layer in enumerate(layers):
        if isinstance(layer, Linear):
            width = layer.out_features
        elif isinstance(layer, ResidualStart):
            if not isinstance(layers[index + 1], Linear):
                return "a residual branch does not start with a linear layer"
            kept.append(width)
        elif isinstance(layer, ResidualAdd):
            if not kept:
                return "a residual sum has no branch start"
            if kept.pop() != width:
                return "a residual branch changes its input's width"
    return "a residual branch is not closed" if kept else None


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
