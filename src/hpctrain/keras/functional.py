"""The functional API: ``Input`` -> layer calls -> ``Model(inputs, outputs)``.

Calling a layer on symbolic tensors records a :class:`Node` (the layer, its input tensors, its
output tensors). A functional model walks those links back from its outputs once, keeps the calls
in topological order, and runs them as a plain ``torch.nn.Module``: a small interpreter over a
list of (layer, input slots, output slots), so autograd trains it like any other module.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from hpctrain.engine.data import Columns, as_numeric, to_tensor
from hpctrain.engine.losses import MultiOutputLoss
from hpctrain.engine.metrics import OutputLoss, OutputMetric, resolve_metric
from hpctrain.errors import ConfigError, InputError
from hpctrain.keras import losses as keras_losses
from hpctrain.keras.layers import LAYERS, InputLayer, KerasTensor, Layer, deserialize
from hpctrain.keras.models import Model

# ---- nested structures (a tensor, a list/tuple of them, a dict of them) -----------------------


def flatten(structure) -> list:
    if isinstance(structure, dict):
        return [leaf for value in structure.values() for leaf in flatten(value)]
    if isinstance(structure, (list, tuple)):
        return [leaf for value in structure for leaf in flatten(value)]
    return [structure]


def map_structure(fn, structure):
    if isinstance(structure, dict):
        return {key: map_structure(fn, value) for key, value in structure.items()}
    if isinstance(structure, (list, tuple)):
        return type(structure)(map_structure(fn, value) for value in structure)
    return fn(structure)


def is_symbolic(inputs) -> bool:
    return any(isinstance(leaf, KerasTensor) for leaf in flatten(inputs))


def is_tensor_structure(inputs) -> bool:
    if isinstance(inputs, Columns):
        return True
    return isinstance(inputs, (list, tuple, dict)) and all(isinstance(leaf, torch.Tensor) for leaf in flatten(inputs))


def batch_shapes(inputs):
    """Keras's build shapes: ``(None, *sample_shape)`` for each tensor of ``inputs``."""
    return map_structure(lambda tensor: (None, *tensor.shape[1:]), inputs)


# ---- recording layer calls -------------------------------------------------------------------


class Node:
    """One call of a layer on symbolic tensors; ``inputs`` is ``None`` for an ``InputLayer``.

    ``serial`` counts calls in the order they were made, which is always a topological order.
    """

    _serials = itertools.count()

    def __init__(self, layer, inputs, kwargs: dict):
        self.serial = next(Node._serials)
        self.layer = layer
        self.inputs = inputs
        self.kwargs = kwargs
        self.outputs: list[KerasTensor] = []
        nodes = layer.__dict__.setdefault("_inbound_nodes", [])
        nodes.append(self)


def input_tensor(layer: InputLayer, dtype: str = "float32") -> KerasTensor:
    node = Node(layer, None, {})
    tensor = KerasTensor(layer.declared_input_shape, name=layer.name, dtype=dtype, node=node)
    node.outputs.append(tensor)
    layer.built = True
    return tensor


def call_symbolic(layer, inputs, kwargs: dict):
    """``layer(inputs)`` on symbolic tensors: builds the layer, records the call, returns its outputs."""
    for leaf in flatten(inputs):
        if not isinstance(leaf, KerasTensor):
            raise InputError(f"{layer.name} was called on a mix of Input tensors and {type(leaf).__name__}; "
                             "call layers in a functional model on the outputs of Input() and other layers only.")
    shapes = map_structure(lambda tensor: tensor.shape, inputs)
    if not layer.built:
        layer.build(shapes)
    out_shapes = layer.compute_output_shape(shapes)
    node = Node(layer, inputs, kwargs)
    several = isinstance(out_shapes, list)
    for index, shape in enumerate(out_shapes if several else [out_shapes]):
        node.outputs.append(KerasTensor(tuple(shape)[1:], name=f"{layer.name}_output_{index}", node=node,
                                        index=index))
    return list(node.outputs) if several else node.outputs[0]


def call_on_arrays(layer, inputs, *, training: bool):
    """``layer(numpy_data)``: inference on tensors made from the arrays, without gradients."""
    tensors = map_structure(lambda array: to_tensor(as_numeric(array, name="inputs"), name="inputs",
                                                    device=torch.device("cpu")), inputs)
    if not layer.built:
        layer._build_on(tensors)
    device = next(layer.parameters(), torch.empty(0)).device
    tensors = map_structure(lambda tensor: tensor.to(device), tensors)
    was_training = layer.training
    layer.train(training)
    try:
        with torch.no_grad():
            outputs = layer(tensors)
    finally:
        layer.train(was_training)
    return map_structure(eager_value, outputs)


class EagerValue(np.ndarray):
    """What calling a model, layer or loss on NumPy data returns: a NumPy array that also has
    Keras's ``.numpy()``, so both ``model(x).numpy()`` and ``np.argmax(model(x), axis=-1)`` work."""

    def numpy(self) -> np.ndarray:
        return np.asarray(self)


def eager_value(tensor: torch.Tensor) -> EagerValue:
    return tensor.detach().cpu().numpy().view(EagerValue)


# ---- the functional model ----------------------------------------------------------------------


class Functional(Model):
    """``Model(inputs, outputs)``: a graph of layer calls, run in topological order.

    ``inputs`` and ``outputs`` may each be one tensor, a list, or a dict (whose keys name the inputs
    and outputs). A layer called twice appears once and shares its weights between the calls.
    """

    @classmethod
    def _default_name(cls) -> str:
        return "functional"

    def __init__(self, inputs=None, outputs=None, name=None, trainable=True, **kwargs):
        super().__init__(name=name, trainable=trainable, **kwargs)
        if inputs is None or outputs is None:
            raise ConfigError("Model(inputs, outputs) needs both: the Input() tensors and the tensors computed "
                              "from them.")
        for what, structure in (("inputs", inputs), ("outputs", outputs)):
            for leaf in flatten(structure):
                if not isinstance(leaf, KerasTensor):
                    raise ConfigError(f"Model {what} must be tensors from Input() and layer calls; got "
                                      f"{type(leaf).__name__}.")
        if isinstance(outputs, (list, tuple)) and len(outputs) == 1:
            outputs = outputs[0]  # Model(inputs, [output]) is a one-output model, as in Keras
        self._inputs, self._outputs = inputs, outputs
        input_tensors, output_tensors = flatten(inputs), flatten(outputs)
        self.input_names = list(inputs) if isinstance(inputs, dict) else [t.name for t in input_tensors]
        self.output_names = list(outputs) if isinstance(outputs, dict) else \
            _unique([t.node.layer.name for t in output_tensors])
        self._nodes = _nodes_in_order(output_tensors, input_tensors)
        layers = _unique_layers([t.node for t in input_tensors] + self._nodes)
        _check_unique_names(layers)
        self._graph_layers = torch.nn.ModuleList(layers)
        self._program, self._input_slots, self._output_slots = _compile_program(self._nodes, input_tensors,
                                                                                output_tensors)
        self._slot_count = 1 + max([*self._input_slots, *(s for _, _, out, _ in self._program for s in out)])
        self.built = True

    # --- Keras surface ------------------------------------------------------------------------

    @property
    def layers(self) -> list[Layer]:
        return list(self._graph_layers)

    @property
    def inputs(self) -> list[KerasTensor]:
        return flatten(self._inputs)

    @property
    def outputs(self) -> list[KerasTensor]:
        return flatten(self._outputs)

    @property
    def input_shape(self):
        shapes = [t.shape for t in self.inputs]
        return shapes[0] if len(shapes) == 1 else shapes

    @property
    def output_shape(self):
        shapes = [t.shape for t in self.outputs]
        return shapes[0] if len(shapes) == 1 else shapes

    def compute_output_shape(self, input_shape):
        shapes = [t.shape for t in self.outputs]
        return shapes[0] if len(shapes) == 1 else shapes

    def output_shapes(self) -> list:
        """The output shape of each layer's first call, for ``summary``."""
        return [layer._inbound_nodes[0].outputs[0].shape for layer in self.layers]

    # --- running the graph --------------------------------------------------------------------

    def forward(self, inputs):
        slots = [None] * self._slot_count
        for slot, value in zip(self._input_slots, self._input_values(inputs)):
            slots[slot] = value
        for layer, in_slots, out_slots, kwargs in self._program:
            result = layer(map_structure(slots.__getitem__, in_slots), **kwargs)
            if len(out_slots) == 1:
                slots[out_slots[0]] = result
            else:
                for slot, value in zip(out_slots, _output_values(result)):
                    slots[slot] = value
        values = [slots[slot] for slot in self._output_slots]
        if isinstance(self._outputs, dict):
            return dict(zip(self._outputs, values))
        if isinstance(self._outputs, (list, tuple)):
            return values
        return values[0]

    def _input_values(self, inputs) -> list:
        if isinstance(inputs, Columns):
            values = list(inputs.parts)
        elif isinstance(inputs, dict):
            missing = [name for name in self.input_names if name not in inputs]
            if missing:
                raise InputError(f"the inputs dict lacks {', '.join(missing)}; the model's inputs are "
                                 f"{', '.join(self.input_names)}.")
            values = [inputs[name] for name in self.input_names]
        elif isinstance(inputs, (list, tuple)):
            values = list(inputs)
        else:
            values = [inputs]
        if len(values) != len(self._input_slots):
            raise InputError(f"the model takes {len(self._input_slots)} input(s) ({', '.join(self.input_names)}); "
                             f"got {len(values)}. Give a list in that order, or a dict keyed by input name.")
        return values

    # --- data in the shapes the engine carries --------------------------------------------------

    def _model_inputs(self, x, name: str):
        return self._float_features(self._as_columns(x, self.input_names, name, "input"))

    def _model_targets(self, y, name: str):
        return self._as_columns(y, self.output_names, name, "output")

    def _structured_validation(self, validation_data):
        if isinstance(validation_data, (list, tuple)) and len(validation_data) in (2, 3):
            x_val, y_val, *rest = validation_data
            return (self._model_inputs(x_val, "x_val"), self._model_targets(y_val, "y_val"), *rest)
        return validation_data

    def _as_columns(self, data, names: list[str], name: str, what: str):
        """One array for a one-input (output) model, else ``Columns`` in the model's order."""
        if data is None or isinstance(data, torch.utils.data.DataLoader):
            return data
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(names))
            missing = [key for key in names if key not in data]
            if unknown or missing:
                raise InputError(f"{name} is a dict with keys {sorted(data)}; the model's {what}s are "
                                 f"{names}. Key the arrays by {what} name.")
            parts = [data[key] for key in names]
        elif isinstance(data, (list, tuple)) and len(names) > 1:
            parts = list(data)
        elif isinstance(data, (list, tuple)) and len(data) == 1 and isinstance(data[0], (np.ndarray, torch.Tensor)):
            parts = list(data)
        else:
            parts = [data]
        if len(parts) != len(names):
            raise InputError(f"the model has {len(names)} {what}s ({', '.join(names)}) but {name} has {len(parts)} "
                             f"array(s); give one array per {what}, as a list in that order or a dict.")
        parts = [as_numeric(part, name=f"{name}[{key!r}]") for part, key in zip(parts, names)]
        return parts[0] if len(parts) == 1 else Columns(parts)

    def _model_outputs(self, outputs):
        if isinstance(outputs, list) and isinstance(self._outputs, dict):
            return dict(zip(self.output_names, outputs))
        return outputs

    def _engine_module(self) -> torch.nn.Module:
        return _OutputColumns(self) if len(self.outputs) > 1 else self

    def _build_from_data(self, x) -> None:
        if x is None or isinstance(x, torch.utils.data.DataLoader):
            return
        for tensor, part in zip(self.inputs, x.parts if isinstance(x, Columns) else [x]):
            expected = tensor.shape[1:]
            given = tuple(part.shape[1:])
            if len(given) != len(expected) or any(e is not None and e != g for e, g in zip(expected, given)):
                raise InputError(f"input {tensor.name} expects samples shaped {expected} but got {given}; "
                                 "reshape the data or change the Input shape.")

    # --- compile: one loss (and metrics) per output ---------------------------------------------

    def _compile_loss_and_metrics(self, loss, loss_weights, metrics):
        if len(self.outputs) == 1:
            loss = _single(loss, self.output_names, "loss")
            metrics = _single(metrics, self.output_names, "metrics") if isinstance(metrics, dict) else metrics
            if loss_weights is not None:
                raise ConfigError("loss_weights weighs the losses of several outputs; this model has one output. "
                                  "Remove loss_weights.")
            return super()._compile_loss_and_metrics(loss, None, metrics)
        names, shapes = self.output_names, [t.shape for t in self.outputs]
        losses = [keras_losses.get(spec) for spec in _per_output(loss, names, "loss")]
        weights = [1.0 if w is None else w for w in _per_output(loss_weights, names, "loss_weights")] \
            if loss_weights is not None else [1.0] * len(names)
        trackers = [OutputLoss(part, index, f"{name}_loss") for index, (part, name) in enumerate(zip(losses, names))]
        per_output = _per_output(metrics, names, "metrics") if metrics else [None] * len(names)
        resolved = []
        for index, (specs, name, shape) in enumerate(zip(per_output, names, shapes)):
            for spec in ([] if specs is None else specs if isinstance(specs, (list, tuple)) else [specs]):
                metric = resolve_metric(spec, losses[index], shape)
                resolved.append(OutputMetric(metric, index, f"{name}_{metric.name}"))
        return MultiOutputLoss(losses, weights, names), trackers + resolved

    # --- config ---------------------------------------------------------------------------------

    def get_config(self) -> dict:
        ref = _tensor_refs(self._nodes, self.inputs)
        return {"name": self.name, "trainable": self.trainable,
                "layers": [{"class_name": type(layer).__name__, "config": layer.get_config()} for layer in self.layers],
                "nodes": [{"layer": node.layer.name, "inputs": map_structure(ref, node.inputs),
                           "kwargs": node.kwargs} for node in self._nodes],
                "input_layers": map_structure(ref, self._inputs),
                "output_layers": map_structure(ref, self._outputs)}

    @classmethod
    def from_config(cls, config: dict) -> "Functional":
        layers = {entry["config"]["name"]: deserialize(entry) for entry in config["layers"]}
        tensors = {}
        for name, layer in layers.items():
            if isinstance(layer, InputLayer):
                tensors[(name, 0, 0)] = input_tensor(layer)
        calls: dict[str, int] = {}
        for node in config["nodes"]:
            layer = layers[node["layer"]]
            inputs = _resolve_refs(node["inputs"], tensors)
            outputs = flatten(layer(inputs, **node.get("kwargs", {})))
            index = calls[node["layer"]] = calls.get(node["layer"], -1) + 1
            for position, tensor in enumerate(outputs):
                tensors[(node["layer"], index, position)] = tensor
        return cls(inputs=_resolve_refs(config["input_layers"], tensors),
                   outputs=_resolve_refs(config["output_layers"], tensors), name=config.get("name"),
                   trainable=config.get("trainable", True))


LAYERS["Functional"] = Functional


class _OutputColumns(torch.nn.Module):
    """The engine's view of a multi-output model: the outputs as ``Columns`` in output order."""

    def __init__(self, model: Functional):
        super().__init__()
        self.model = model

    def forward(self, x):
        outputs = self.model(x)
        return Columns(outputs.values() if isinstance(outputs, dict) else outputs)


# ---- graph helpers ------------------------------------------------------------------------------


def _nodes_in_order(outputs: list[KerasTensor], inputs: list[KerasTensor]) -> list[Node]:
    """The layer calls between ``inputs`` and ``outputs``, in the order they were made (so each
    comes after the calls it depends on, and the layers keep the order the program wrote them in)."""
    input_ids = {id(tensor) for tensor in inputs}
    ordered, seen = [], set()

    def visit(tensor: KerasTensor) -> None:
        node = tensor.node
        if id(tensor) in input_ids:
            return
        if node is None or node.inputs is None:
            raise ConfigError(f"the outputs depend on {tensor.name}, which is not among the model's inputs "
                              f"({', '.join(t.name for t in inputs)}); pass every Input() the outputs use.")
        if id(node) in seen:
            return
        seen.add(id(node))
        for parent in flatten(node.inputs):
            visit(parent)
        ordered.append(node)

    for tensor in outputs:
        visit(tensor)
    return sorted(ordered, key=lambda node: node.serial)


def _unique(items: list) -> list:
    return list(dict.fromkeys(items))


def _unique_layers(nodes: list[Node]) -> list:
    return list({id(node.layer): node.layer for node in nodes}.values())


def _check_unique_names(layers: list) -> None:
    names = [layer.name for layer in layers]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"layer names must be unique within a model; repeated: {', '.join(repeated)}. "
                          "Give the layers distinct name= arguments.")


def _compile_program(nodes: list[Node], inputs: list[KerasTensor], outputs: list[KerasTensor]):
    """The graph as ``(layer, input slots, output slots, kwargs)`` steps over a list of values."""
    slot_of: dict[int, int] = {}
    for tensor in inputs:
        slot_of.setdefault(id(tensor), len(slot_of))
    program = []
    for node in nodes:
        in_slots = map_structure(lambda tensor: slot_of[id(tensor)], node.inputs)
        out_slots = [slot_of.setdefault(id(tensor), len(slot_of)) for tensor in node.outputs]
        program.append((node.layer, in_slots, out_slots, dict(node.kwargs)))
    return program, [slot_of[id(t)] for t in inputs], [slot_of[id(t)] for t in outputs]


def _output_values(result) -> list:
    if isinstance(result, dict):
        return list(result.values())
    if isinstance(result, Columns):
        return list(result.parts)
    return list(result)


def _tensor_refs(nodes: list[Node], inputs: list[KerasTensor]):
    """Each tensor as Keras's ``[layer name, call index, output index]``, calls counted in this model."""
    refs = {}
    for tensor in inputs:
        refs[id(tensor)] = [tensor.node.layer.name, 0, 0]
    calls: dict[str, int] = {}
    for node in nodes:
        index = calls[node.layer.name] = calls.get(node.layer.name, -1) + 1
        for position, tensor in enumerate(node.outputs):
            refs[id(tensor)] = [node.layer.name, index, position]
    return lambda tensor: refs[id(tensor)]


def _is_ref(value) -> bool:
    return isinstance(value, list) and len(value) == 3 and isinstance(value[0], str) and isinstance(value[1], int)


def _resolve_refs(structure, tensors: dict):
    if _is_ref(structure):
        key = tuple(structure)
        if key not in tensors:
            raise InputError(f"the saved model refers to {structure}, which no layer produces; the file is damaged.")
        return tensors[key]
    if isinstance(structure, dict):
        return {key: _resolve_refs(value, tensors) for key, value in structure.items()}
    return [_resolve_refs(value, tensors) for value in structure]


def _per_output(spec, names: list[str], what: str) -> list:
    """A compile argument given once, as a list in output order, or as a dict by output name."""
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - set(names))
        missing = [name for name in names if name not in spec]
        if unknown or (missing and what == "loss"):
            raise ConfigError(f"compile {what} is a dict with keys {sorted(spec)}; the model's outputs are "
                              f"{names}. Key it by output name, one entry per output.")
        return [spec.get(name) for name in names]
    if isinstance(spec, (list, tuple)):
        if what == "metrics" and len(spec) != len(names) and not any(isinstance(s, (list, tuple, dict)) for s in spec):
            return [list(spec)] * len(names)  # a flat list of metrics: each output gets all of them
        if len(spec) != len(names):
            raise ConfigError(f"compile {what} is a list of {len(spec)}; the model has {len(names)} outputs "
                              f"({', '.join(names)}). Give one entry per output, or a dict by output name.")
        return list(spec)
    return [spec] * len(names)


def _single(spec, names: list[str], what: str):
    """The only entry of a one-output model's per-output argument (a one-item list or dict)."""
    if isinstance(spec, dict):
        return _per_output(spec, names, what)[0]
    if what == "loss" and isinstance(spec, (list, tuple)):
        return _per_output(spec, names, what)[0]
    return spec
