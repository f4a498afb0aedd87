"""``tf.saved_model.save`` / ``tf.saved_model.load``, as a directory around a ``.keras`` file.

Layout of ``export_dir``::

    export_dir/
        model.keras               the model, written by Keras's own model.save (architecture,
                                  weights, compile state); keras.models.load_model reads it
        hpctrain_saved_model.json {"format": 1, "model_file": "model.keras", "keras_version": ...}

Unlike a TensorFlow SavedModel there is no graph: loading needs the same Python classes (custom
layers registered with ``keras.saving.register_keras_serializable``) that Keras's loading needs.
"""

from __future__ import annotations

import json
import os

import torch

from hpctrain import keras

MODEL_FILE = "model.keras"
INDEX_FILE = "hpctrain_saved_model.json"
FORMAT = 1


def save(obj, export_dir, signatures=None, options=None) -> None:
    """Write the Keras model ``obj`` into the directory ``export_dir`` (created if needed)."""
    if not isinstance(obj, keras.Model):
        raise TypeError(f"tf.saved_model.save here saves Keras models; got {type(obj).__name__}.")
    export_dir = os.fspath(export_dir)
    os.makedirs(export_dir, exist_ok=True)
    obj.save(os.path.join(export_dir, MODEL_FILE))
    index = {"format": FORMAT, "model_file": MODEL_FILE, "keras_version": keras.__version__}
    with open(os.path.join(export_dir, INDEX_FILE), "w", encoding="utf-8") as file:
        json.dump(index, file, indent=2)


class LoadedModel:
    """What ``tf.saved_model.load`` returns: call it on inputs for inference.

    ``loaded(x)`` runs the model with ``training=False`` without recording gradients and returns
    the outputs on the CPU, so they convert to NumPy (``np.asarray(out)`` or ``out.numpy()``). ``signatures
    ["serving_default"]`` returns ``{"output_0": outputs}`` as TensorFlow's signature does;
    ``keras_model`` is the Keras model itself."""

    def __init__(self, keras_model, export_dir: str):
        self.keras_model = keras_model
        self.export_dir = export_dir
        self.signatures = {"serving_default": self._serve}

    def __call__(self, inputs, training=False):
        with torch.no_grad():
            outputs = self.keras_model(inputs, training=training)
        return keras.tree.map_structure(lambda t: t.cpu() if isinstance(t, torch.Tensor) else t, outputs)

    def _serve(self, *args, **kwargs):
        inputs = args[0] if args else (next(iter(kwargs.values())) if len(kwargs) == 1 else kwargs)
        return {"output_0": self(inputs)}


def load(export_dir, tags=None, options=None) -> LoadedModel:
    """Read a directory written by :func:`save`."""
    export_dir = os.fspath(export_dir)
    index_path = os.path.join(export_dir, INDEX_FILE)
    if not os.path.isfile(index_path):
        raise OSError(f"{export_dir} is not a model directory written by tf.saved_model.save here "
                      f"(no {INDEX_FILE}); TensorFlow SavedModels need TensorFlow to load.")
    with open(index_path, encoding="utf-8") as file:
        index = json.load(file)
    if index.get("format") != FORMAT:
        raise OSError(f"{index_path} has format {index.get('format')!r}; this hpctrain reads format {FORMAT}.")
    model = keras.models.load_model(os.path.join(export_dir, index["model_file"]))
    return LoadedModel(model, export_dir)
