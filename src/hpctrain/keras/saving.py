"""Weights on disk in safetensors: tensors only, nothing that executes on load."""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file, save_file

from hpctrain.errors import InputError, warn


def _named_weights(model) -> dict[str, torch.nn.Parameter]:
    return {f"{index:03d}/{layer.name}/{name}": param
            for index, layer in enumerate(model.layers)
            for name, param in layer.named_parameters(recurse=True)}


def save_weights(model, filepath: str) -> None:
    tensors = {key: param.detach().cpu().contiguous() for key, param in _named_weights(model).items()}
    tmp = f"{filepath}.tmp"
    save_file(tensors, tmp)
    os.replace(tmp, filepath)  # readers never see a half-written file


def load_weights(model, filepath: str) -> None:
    if not os.path.exists(filepath):
        raise InputError(f"no weights file at {filepath!r}; save one with model.save_weights(path) first.")
    try:
        stored = load_file(filepath)
    except Exception as exc:  # SafetensorError: not safetensors; a pickle is never unpickled
        raise InputError(f"{filepath} is not a safetensors weights file ({exc}); only safetensors files written "
                         "by save_weights are loaded (pickled files are refused: they can run code).") from exc
    own = _named_weights(model)
    stored_by_position = sorted(stored)
    own_by_position = sorted(own)
    if len(stored_by_position) != len(own_by_position):
        raise InputError(f"{filepath} holds {len(stored)} weights but the model has {len(own)}; "
                         "load weights saved from a model with the same layers.")
    with torch.no_grad():
        for stored_key, own_key in zip(stored_by_position, own_by_position):
            value, param = stored[stored_key], own[own_key]
            if value.shape != param.shape:
                raise InputError(f"weight {stored_key} in {filepath} is shaped {tuple(value.shape)} but the model's "
                                 f"{own_key} is {tuple(param.shape)}; the architectures differ.")
            param.copy_(value)


# --- whole models: architecture as JSON plus weights as safetensors, in one zip file -----------

FORMAT = "hpctrain-keras"
CONFIG_ENTRY = "config.json"
WEIGHTS_ENTRY = "model.weights.safetensors"


def save_model(model, filepath: str) -> None:
    """``model.save(path)``: the architecture (JSON) and the weights (safetensors) in one zip.

    Nothing in the file is code: loading never unpickles anything.
    """
    import json
    import zipfile

    from safetensors.torch import save

    config = {"format": FORMAT, "version": 1, "class_name": type(model).__name__, "config": model.get_config()}
    tensors = {key: param.detach().cpu().contiguous() for key, param in _named_weights(model).items()}
    tmp = f"{filepath}.tmp"
    with zipfile.ZipFile(tmp, "w") as archive:
        archive.writestr(CONFIG_ENTRY, json.dumps(config, indent=2))
        archive.writestr(WEIGHTS_ENTRY, save(tensors))
    os.replace(tmp, filepath)


def load_model(filepath: str, compile: bool = False):
    """The model ``save_model`` wrote, with its weights; uncompiled (call ``compile`` to train)."""
    import json
    import zipfile

    from safetensors.torch import load

    from hpctrain.keras import functional  # noqa: F401  (registers Functional as a loadable class)
    from hpctrain.keras.layers import LAYERS
    from hpctrain.keras.models import Model

    if not os.path.exists(filepath):
        raise InputError(f"no saved model at {filepath!r}.")
    try:
        with zipfile.ZipFile(filepath) as archive:
            config = json.loads(archive.read(CONFIG_ENTRY))
            weights = load(archive.read(WEIGHTS_ENTRY))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise InputError(f"{filepath} is not a model saved by model.save() ({exc}).") from exc
    model_class = LAYERS.get(config.get("class_name"))
    if config.get("format") != FORMAT or not (isinstance(model_class, type) and issubclass(model_class, Model)):
        raise InputError(f"{filepath} holds {config.get('format')!r} / {config.get('class_name')!r}; expected a "
                         f"{FORMAT!r} Sequential or Functional model.")
    model = model_class.from_config(config["config"])
    own = _named_weights(model)
    if sorted(own) != sorted(weights):
        raise InputError(f"{filepath}: the weights do not match the architecture stored beside them.")
    with torch.no_grad():
        for key, param in own.items():
            param.copy_(weights[key])
    if compile:
        warn(f"load_model({filepath!r}, compile=True): the file keeps no loss or optimizer, so the model comes "
             "back uncompiled; call model.compile(...) before fit or evaluate (predict works as it is).")
    return model
