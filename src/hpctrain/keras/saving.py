"""Weights on disk in safetensors: tensors only, nothing that executes on load."""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file, save_file

from hpctrain.errors import InputError


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
    stored = load_file(filepath)
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
