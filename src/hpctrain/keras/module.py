"""A Keras model seen by the engine as a plain ``torch.nn.Module``."""

from __future__ import annotations

import keras
import torch

from hpctrain.keras import translate
from hpctrain.keras.native_forward import ends_in_activation_layer, native_forward


class KerasModule(torch.nn.Module):
    """``forward(x)`` is the Keras model called in the module's training mode.

    ``logits=True`` (a Sequential whose last Dense, or last ``Activation`` layer, ends in
    softmax/sigmoid, trained with the matching cross-entropy) returns the output before that
    activation; the engine then applies the activation for ``predict`` and for metrics that read
    probabilities.

    Where the model qualifies, the call runs as torch ops on the layers' variables
    (:mod:`hpctrain.keras.native_forward`): the same numbers without Keras's per-layer call
    machinery and its NHWC/NCHW copies.
    """

    # Class-wide so that a benchmark can time Keras's own call against the native one.
    uses_native_forward = True

    def __init__(self, model, *, logits: bool = False):
        super().__init__()
        self.keras_model = model
        self.logits = logits
        # (layers it was made for, NativeForward or None, the input row shape where the first layer
        # only flattens rows, else None)
        self._made_for = None

    def forward(self, x):
        if isinstance(x, (list, tuple)) and len(x) == 1:
            x = x[0]
        _, native, row_shape = self._per_layers()
        if row_shape is not None and isinstance(x, torch.Tensor) and x.dim() == 2:
            # Rows the static step took flattened (a training batch replayed to find a
            # non-finite output), back in the shape of the model's input.
            x = x.reshape(len(x), *row_shape)
        if native is not None and self.uses_native_forward and native.takes(x):
            return native(x, self.training)
        return self._keras_forward(x)

    def _per_layers(self):
        """Made once per set of layers: a layer added after compiling makes it again."""
        layers = tuple(self.keras_model.layers) if isinstance(self.keras_model, keras.Sequential) else ()
        if self._made_for is None or self._made_for[0] != layers:
            row_shape = self._input_row_shape() if self.flattens_rows() else ()
            self._made_for = (layers, native_forward(self.keras_model, logits=self.logits),
                              row_shape if len(row_shape) > 1 else None)
        return self._made_for

    def _keras_forward(self, x):
        if not self.logits:
            return self.keras_model(x, training=self.training)
        *body, last = self.keras_model.layers
        for layer in body:
            x = layer(x, training=self.training)
        if ends_in_activation_layer(self.keras_model):
            return x  # the activation is the engine's
        z = torch.matmul(x, last.kernel.value)
        return z + last.bias.value if last.use_bias else z

    def output_shape_of(self, x) -> tuple[int, ...]:
        """The output shape for the first rows of ``x``, found as Keras's ``fit`` finds it: a
        symbolic call, which leaves the model's state (a layer counting its calls) untouched."""
        from keras.src import backend

        rows = x[:2]
        spec = backend.compute_output_spec(
            self.keras_model, backend.KerasTensor(tuple(rows.shape), backend.standardize_dtype(rows.dtype)),
            training=False)
        if not isinstance(spec, backend.KerasTensor):
            raise TypeError(f"the model returns a {type(spec).__name__}")
        return tuple(spec.shape)

    # The module's state (the engine's checkpoints) is keyed by each variable's position in
    # ``model.variables``, not by its path: Keras numbers layer names per process
    # (``dense_4``), so a model built again to resume would not find its own weights by name.

    def _stable_key(self, key: str, positions: dict) -> str:
        head, marker, path = key.rpartition("_torch_params.")
        return f"{head}{marker}{positions[path]}" if marker and path in positions else key

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        positions = {v.path: index for index, v in enumerate(self.keras_model.variables)}
        renamed = type(state)((self._stable_key(key, positions), value) for key, value in state.items())
        if hasattr(state, "_metadata"):
            renamed._metadata = state._metadata
        return renamed

    def load_state_dict(self, state_dict, *args, **kwargs):
        positions = {str(index): v.path for index, v in enumerate(self.keras_model.variables)}
        named = {}
        for key, value in state_dict.items():
            head, marker, position = key.rpartition("_torch_params.")
            named[f"{head}{marker}{positions[position]}" if marker and position in positions else key] = value
        return super().load_state_dict(named, *args, **kwargs)

    def static_layers(self):
        return translate.static_layers(self.keras_model, fold_last_activation=self.logits)

    def why_not_static_layers(self) -> str:
        return translate.why_not_static_layers(self.keras_model, fold_last_activation=self.logits)

    def statistics(self) -> list[torch.Tensor]:
        """What the forward pass updates besides gradients: BatchNormalization's moving statistics."""
        return [v.value for v in self.keras_model.non_trainable_variables
                if v.value.is_floating_point() and "moving" in v.path]

    def _input_row_shape(self) -> tuple:
        try:
            return tuple(self.keras_model.inputs[0].shape[1:])
        except (AttributeError, ValueError, IndexError):  # not built yet: no input to flatten for
            return ()

    def flattens_rows(self) -> bool:
        """Whether the model is a Sequential whose first layer only flattens each input row: the
        static step then takes the rows flattened once (:func:`translate.flattens_rows`)."""
        layers = [layer for layer in getattr(self.keras_model, "layers", [])
                  if not isinstance(layer, keras.layers.InputLayer)]
        return isinstance(self.keras_model, keras.Sequential) and bool(layers) and translate.flattens_rows(layers[0])

    def takes_ids(self) -> bool:
        """Whether some layer looks integer ids up (its inputs must stay integers)."""
        return any(isinstance(layer, keras.layers.Embedding) for layer in _all_layers(self.keras_model))


def _all_layers(model):
    return model._flatten_layers(include_self=False) if hasattr(model, "_flatten_layers") else model.layers
