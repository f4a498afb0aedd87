"""A user's own Keras layer read as the static executor's primitives, from one traced call.

A layer whose ``call`` is ``act(x @ W + b)`` (repeated), or ``x + act(x @ W + b)`` around such a
chain, is a stack of linear layers, activations and a residual sum, whatever ops spell it
(``keras.ops``, torch, operators). Its ``call`` is run once on a small constant batch under a
``TorchFunctionMode`` that records every torch function it reaches; the recorded data flow is
matched to those forms. Anything else touching the data (another op, a dtype change, reading a
value into Python, which branching on data needs) or a weight left unused, and the layer is not
described: the model trains on the autograd path, which runs the layer's own ``call``.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from hpctrain.engine.static_layers import Activation, Linear, ResidualAdd, ResidualStart
from hpctrain.keras.native_forward import calls_directly

_MATMUL = {torch.matmul, torch.mm, torch.Tensor.matmul, torch.Tensor.mm, torch.Tensor.__matmul__}
_ADD = {torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__}
_ACTIVATIONS = {
    **dict.fromkeys((torch.relu, F.relu, torch.Tensor.relu), "relu"),
    **dict.fromkeys((torch.tanh, F.tanh, torch.Tensor.tanh), "tanh"),
    **dict.fromkeys((torch.sigmoid, F.sigmoid, torch.Tensor.sigmoid), "sigmoid"),
}
_SHAPE_READS = {torch.Tensor.size, torch.Tensor.dim}
_ROWS = 2  # rows of the traced batch: enough to tell rows from a broadcast


class _Untraceable(Exception):
    """The call did something the matcher does not describe."""


class _Recorder(TorchFunctionMode):
    """Records the call's data flow as nodes: ``("input",)``, ``("weight", variable)``,
    ``("matmul", a, b)``, ``("add", a, b)``, ``("activation", name, a)``, keyed by tensor id."""

    def __init__(self, batch: torch.Tensor, variables):
        super().__init__()
        self.nodes = {id(batch): ("input",)}
        self.alive = [batch]  # ids stay unique while their tensors live
        for variable in variables:
            self.nodes[id(variable)] = self.nodes[id(variable.value)] = ("weight", variable)
        self.failure = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if self.failure is None:
            try:
                self._record(func, args, kwargs, result)
            except _Untraceable as failure:
                self.failure = str(failure)
        return result

    def _record(self, func, args, kwargs, result) -> None:
        traced = [self.nodes[id(a)] for a in args if id(a) in self.nodes]
        if not traced:
            return
        if not isinstance(result, torch.Tensor):
            if getattr(func, "__name__", "") == "__get__" or func in _SHAPE_READS:
                return  # shape, dtype, device: no data
            raise _Untraceable(f"{_name(func)} reads the data")
        if result is args[0] and not kwargs and func is torch.Tensor.to:
            return  # a conversion to what the tensor already is
        self.nodes[id(result)] = self._node(func, args, kwargs)
        self.alive.append(result)

    def _node(self, func, args, kwargs):
        operands = [self.nodes.get(id(a)) for a in args]
        if func in _ACTIVATIONS and len(args) == 1 and not kwargs.get("inplace") and operands[0]:
            return ("activation", _ACTIVATIONS[func], operands[0])
        if set(kwargs) - {"inplace"}:
            raise _Untraceable(f"{_name(func)} with {sorted(kwargs)}")
        if len(args) == 2 and None not in operands and (func in _MATMUL or func in _ADD):
            return ("matmul" if func in _MATMUL else "add", *operands)
        raise _Untraceable(f"{_name(func)} is not a product, sum or activation")


def _name(func) -> str:
    return getattr(func, "__qualname__", None) or repr(func)


def traced_static_layers(layer, width: int):
    """The static primitives ``layer`` computes on rows of ``width`` features, or ``None``."""
    if not calls_directly(layer) or layer.non_trainable_variables or layer.losses:
        return None  # non-trainable variables include a seed generator's state, which a call advances
    batch = torch.full((_ROWS, width), 0.5)
    training = {"training": True} if "training" in inspect.signature(layer.call).parameters else {}
    recorder = _Recorder(batch, layer.trainable_variables)
    try:  # fork_rng: a random op in the call must not move the fit's global stream
        with torch.random.fork_rng(devices=[]), torch.no_grad(), recorder:
            output = layer.call(batch, **training)
    except Exception:  # noqa: BLE001 - a call that fails on the probe is left to Keras's own path
        return None
    finally:
        if layer.losses:
            layer._clear_losses()  # Keras's private list, in the pinned range, as DirectCall clears it
    node = recorder.nodes.get(id(output)) if isinstance(output, torch.Tensor) else None
    if recorder.failure is not None or node is None or tuple(output.shape) != (_ROWS, width):
        return None
    described = _residual(node) or _chain(node)
    if not described or not _uses_each_weight_once(described, layer.trainable_variables):
        return None
    return described if _shapes_fit(described, width) else None


def _residual(node):
    """``x + chain(x)`` in either order, the chain not empty."""
    if node[0] != "add":
        return None
    for kept, branch in ((node[1], node[2]), (node[2], node[1])):
        chain = _chain(branch) if kept[0] == "input" else None
        if chain:
            return [ResidualStart(), *chain, ResidualAdd()]
    return None


def _chain(node):
    """Linear layers and activations from the input to ``node``, first first; ``None`` where
    ``node`` is not one. ``[]`` for the input itself."""
    kind = node[0]
    if kind == "input":
        return []
    if kind == "activation":
        inner = _chain(node[2])
        return None if inner is None else [*inner, Activation(node[1])]
    if kind == "matmul":
        return _linear(node, None)
    if kind == "add":
        for product, bias in ((node[1], node[2]), (node[2], node[1])):
            if product[0] == "matmul" and _weight(bias, 1):
                linear = _linear(product, bias[1])
                if linear is not None:
                    return linear
    return None


def _linear(product, bias):
    inputs, kernel = product[1], product[2]
    inner = _chain(inputs) if _weight(kernel, 2) else None
    if inner is None:
        return None
    return [*inner, Linear(kernel[1].value, None if bias is None else bias.value, transposed=False)]


def _uses_each_weight_once(layers, variables) -> bool:
    used = [id(p) for layer in layers if isinstance(layer, Linear) for p in (layer.weight, layer.bias)
            if p is not None]
    return sorted(used) == sorted(id(v.value) for v in variables)


def _weight(node, ndim: int) -> bool:
    return node[0] == "weight" and len(node[1].shape) == ndim


def _shapes_fit(layers, width: int) -> bool:
    """Each kernel takes the width before it, each bias is as wide as its kernel's output and a
    residual sum adds equal widths: then no product or sum broadcast."""
    kept = []
    for layer in layers:
        if isinstance(layer, Linear):
            rows, columns = layer.weight.shape
            if rows != width or layer.bias is not None and tuple(layer.bias.shape) != (columns,):
                return False
            width = columns
        elif isinstance(layer, ResidualStart):
            kept.append(width)
        elif isinstance(layer, ResidualAdd) and kept.pop() != width:
            return False
    return True
