"""A layer's call read as the static executor's primitives, from one traced call.

A call that computes ``act(x @ W + b)`` (repeated; ``F.linear`` counts as a product with a
transposed weight), or ``x + chain(x)`` around such a chain, is a stack of linear layers,
activations and a residual sum, whatever ops spell it (``keras.ops``, torch functions, operators,
``nn.Linear`` submodules). The call is run once on a small constant batch under a
``TorchFunctionMode`` that records every torch function it reaches, and the recorded data flow is
matched to those forms. Anything else touching the data (another op, a dtype change, reading a
value into Python, which branching on data needs, writing into a tensor) or a weight left unused
or used twice, and the call is not described: the model trains on the autograd path, which runs
the call itself. The probe stops the call at the first op it cannot read, before that op runs,
so it leaves the weights as it found them; a call's Python-side effects (a counter) happen once.

The front ends decide which layers may be probed (:mod:`hpctrain.keras.traced_layers` for a
Keras layer of the user's own; :func:`traced_module_layers` for a torch module).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from hpctrain.engine.static_layers import Activation, Linear, ResidualAdd, ResidualStart

_MATMUL = {torch.matmul, torch.mm, torch.Tensor.matmul, torch.Tensor.mm, torch.Tensor.__matmul__}
_ADD = {torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__}
_ACTIVATIONS = {
    **dict.fromkeys((torch.relu, F.relu, torch.Tensor.relu), "relu"),
    **dict.fromkeys((torch.tanh, F.tanh, torch.Tensor.tanh), "tanh"),
    **dict.fromkeys((torch.sigmoid, F.sigmoid, torch.Tensor.sigmoid), "sigmoid"),
}
_SHAPE_READS = {torch.Tensor.size, torch.Tensor.dim}
ROWS = 2  # rows of the probe batch: enough to tell rows from a broadcast
_INPUT = ("input",)


class _Untraceable(Exception):
    """The call did something the matcher does not describe."""


class _Recorder(TorchFunctionMode):
    """Records the call's data flow as nodes keyed by tensor id: ``("input",)``,
    ``("weight", parameter)``, ``("matmul", a, w)``, ``("linear", a, w, b)``, ``("add", a, b)``,
    ``("activation", name, a)``."""

    def __init__(self, batch: torch.Tensor, weights: dict[int, torch.Tensor]):
        super().__init__()
        self.nodes = {id(batch): _INPUT, **{key: ("weight", param) for key, param in weights.items()}}
        self.alive = [batch]  # ids stay unique while their tensors live
        self.failure = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        # The first op the matcher cannot describe ends the call (and any op after it, should the
        # call catch the error): the probe runs nothing it did not read, so it cannot write into
        # the weights, or through an alias of them, and leaves them as it found them.
        kwargs = kwargs or {}
        if self.failure is None and _writes_in_place(func, kwargs) and self._touches_traced(args, kwargs):
            self.failure = f"{_name(func)} writes in place"
        if self.failure is not None:
            raise _Untraceable(self.failure)
        result = func(*args, **kwargs)
        try:
            self._record(func, args, kwargs, result)
        except _Untraceable as failure:
            self.failure = str(failure)
            raise
        return result

    def _touches_traced(self, args, kwargs) -> bool:
        return any(id(a) in self.nodes for a in (*args, *kwargs.values()))

    def _record(self, func, args, kwargs, result) -> None:
        if not self._touches_traced(args, kwargs):
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
        if func in _ACTIVATIONS and len(args) == 1 and set(kwargs) <= {"inplace"} and not kwargs.get("inplace"):
            return ("activation", _ACTIVATIONS[func], operands[0])
        if func is F.linear and not kwargs and len(args) in (2, 3) and None not in operands[:2]:
            bias = operands[2] if len(args) == 3 and args[2] is not None else None
            if len(args) == 3 and args[2] is not None and bias is None:
                raise _Untraceable("linear with a bias that is not a weight")
            return ("linear", operands[0], operands[1], bias)
        if not kwargs and len(args) == 2 and None not in operands and (func in _MATMUL or func in _ADD):
            return ("matmul" if func in _MATMUL else "add", *operands)
        raise _Untraceable(f"{_name(func)} is not a product, sum or activation")


def _writes_in_place(func, kwargs) -> bool:
    """``x.add_(...)``, ``x += ...``, ``x[...] = ...`` and ``out=``: torch's names for writing into a tensor."""
    name = getattr(func, "__name__", "")
    return ("out" in kwargs or name == "__setitem__" or name.endswith("_") and not name.endswith("__")
            or name.startswith("__i") and name.endswith("__") and name not in ("__init__", "__index__", "__int__"))


_OWNERS = {"_VariableFunctionsClass": "torch", "TensorBase": "Tensor", "_TensorBase": "Tensor"}
_MODULES = {"torch._C._nn": "torch.nn.functional", "torch.nn.functional": "torch.nn.functional"}


def _name(func) -> str:
    """``torch.square``, ``Tensor.mean``, ``torch.nn.functional.gelu``: the name a user wrote."""
    qualified = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    owner, _, name = qualified.rpartition(".")
    if owner:
        return f"{_OWNERS.get(owner, owner)}.{name}"
    module = _MODULES.get(getattr(func, "__module__", None) or "")
    return f"{module}.{name}" if module else name


def describe_call(call, width: int, weights: dict[int, torch.Tensor]):
    """The static primitives ``call`` computes on rows of ``width`` features, or ``None``."""
    return trace_call(call, width, weights)[0]


def trace_call(call, width: int, weights: dict[int, torch.Tensor]) -> tuple[list | None, str]:
    """``(primitives, "")`` for what ``call`` computes on rows of ``width`` features, else
    ``(None, why not)``.

    ``weights`` maps the id of every object that stands for a weight in the call (a parameter, a
    front end's variable wrapping it) to the parameter; each must be used exactly once. The probe
    keeps torch's global RNG stream where it was."""
    batch = torch.full((ROWS, width), 0.5)
    recorder = _Recorder(batch, weights)
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad(), recorder:
            output = call(batch)
    except Exception as error:  # noqa: BLE001 - a call that fails on the probe is left to its own path
        return None, recorder.failure or f"its call fails on {ROWS} rows of {width} features ({error})"
    node = recorder.nodes.get(id(output)) if isinstance(output, torch.Tensor) else None
    if recorder.failure is not None:
        return None, recorder.failure
    if node is None or output.dim() != 2 or output.shape[0] != ROWS:
        return None, "its output is not a row per input row"
    described = _residual(node) or _chain(node)
    if not described:
        return None, "its call is not linear layers and activations, nor x plus them"
    if not _uses_each_weight_once(described, weights.values()):
        return None, "a weight is used twice or not at all"
    if not _shapes_fit(described, width):
        return None, "a product or sum broadcasts"
    return described, ""


def traced_module_layers(module: torch.nn.Module, width: int | None):
    """A torch module of the user's own, in a ``Sequential``, as static primitives, or ``None``."""
    return trace_module(module, width)[0]


def trace_module(module: torch.nn.Module, width: int | None) -> tuple[list | None, str]:
    """As :func:`trace_call` for a module's forward: it must have no buffers (running statistics
    are state), and every parameter must be a trained weight."""
    parameters = list(module.parameters())
    if width is None:
        return None, "it comes before any linear layer"
    if any(True for _ in module.buffers()):
        return None, "it has buffers"
    if not all(p.requires_grad for p in parameters):
        return None, "some of its parameters are frozen"
    return trace_call(module, width, {id(p): p for p in parameters})


def _residual(node):
    """``x + chain(x)`` in either order, the chain not empty."""
    if node[0] != "add":
        return None
    for kept, branch in ((node[1], node[2]), (node[2], node[1])):
        chain = _chain(branch) if kept is _INPUT else None
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
        return _linear(node[1], node[2], None, transposed=False)
    if kind == "linear":
        return _linear(node[1], node[2], node[3], transposed=True)
    if kind == "add":
        for product, bias in ((node[1], node[2]), (node[2], node[1])):
            if product[0] == "matmul" and _is_weight(bias, 1):
                linear = _linear(product[1], product[2], bias, transposed=False)
                if linear is not None:
                    return linear
    return None


def _linear(inputs, kernel, bias, *, transposed: bool):
    if not _is_weight(kernel, 2) or bias is not None and not _is_weight(bias, 1):
        return None
    inner = _chain(inputs)
    if inner is None:
        return None
    return [*inner, Linear(kernel[1], None if bias is None else bias[1], transposed=transposed)]


def _is_weight(node, ndim: int) -> bool:
    return node is not None and node[0] == "weight" and node[1].dim() == ndim


def _uses_each_weight_once(layers, weights) -> bool:
    used = [id(p) for layer in layers if isinstance(layer, Linear) for p in (layer.weight, layer.bias)
            if p is not None]
    return sorted(used) == sorted({id(p): p for p in weights})


def _shapes_fit(layers, width: int) -> bool:
    """Each kernel takes the width before it and each bias is as wide as its kernel's output: no
    product or bias sum broadcasts. (A residual sum of unequal widths is refused for every model
    by :func:`~hpctrain.engine.static_layers.why_not_static`.)"""
    for layer in layers:
        if isinstance(layer, Linear):
            rows, columns = layer.kernel().shape
            if rows != width or layer.bias is not None and tuple(layer.bias.shape) != (columns,):
                return False
            width = columns
    return True
