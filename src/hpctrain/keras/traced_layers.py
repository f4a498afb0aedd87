"""A user's own Keras layer read as the static executor's primitives, from one traced call
(:mod:`hpctrain.engine.traced_layers` reads the call; this module says which layers are probed).

A layer is probed where its ``call`` is what fit would run (:func:`calls_directly`: a built,
float32 leaf layer of the user's own, no masks), it holds no non-trainable variable (a seed
generator's state would move with each call) and has no ``add_loss`` terms pending.
"""

from __future__ import annotations

import inspect

from hpctrain.engine.traced_layers import trace_call
from hpctrain.keras.native_forward import calls_directly


def traced_static_layers(layer, width: int):
    """The static primitives ``layer`` computes on rows of ``width`` features, or ``None``."""
    return traced_static_layers_and_why(layer, width)[0]


def traced_static_layers_and_why(layer, width: int) -> tuple[list | None, str]:
    """``(primitives, "")``, or ``(None, why the layer is not described)``."""
    if not calls_directly(layer):
        return None, "not a built float32 leaf layer whose call takes the input alone"
    if layer.non_trainable_variables:  # a seed generator's state among them: a call would move it
        return None, "it has non-trainable variables"
    if layer.losses:
        return None, "it has add_loss terms"
    training = {"training": True} if "training" in inspect.signature(layer.call).parameters else {}
    weights = {}
    for variable in layer.trainable_variables:  # ops meet the variable or the tensor it holds
        weights[id(variable)] = weights[id(variable.value)] = variable.value
    try:
        return trace_call(lambda batch: layer.call(batch, **training), width, weights)
    finally:
        if layer.losses:
            layer._clear_losses()  # Keras's private list, in the pinned range, as DirectCall clears it
