"""Keras activation functions by name, as PyTorch functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hpctrain.errors import ConfigError, valid_names_hint


def linear(x):
    return x


def relu(x):
    return torch.relu(x)


def sigmoid(x):
    return torch.sigmoid(x)


def tanh(x):
    return torch.tanh(x)


def softmax(x, axis=-1):
    return torch.softmax(x, dim=axis)


def gelu(x, approximate=False):
    return F.gelu(x, approximate="tanh" if approximate else "none")


def elu(x, alpha=1.0):
    return F.elu(x, alpha=alpha)


def selu(x):
    return F.selu(x)


def softplus(x):
    return F.softplus(x)


def leaky_relu(x, negative_slope=0.2):
    # Keras 3's default slope is 0.2, not PyTorch's 0.01.
    return F.leaky_relu(x, negative_slope=negative_slope)


ACTIVATIONS = {f.__name__: f for f in (linear, relu, sigmoid, tanh, softmax, gelu, elu, selu, softplus, leaky_relu)}


def get(identifier):
    """An activation from a name, a callable or ``None`` (linear)."""
    if identifier is None:
        return linear
    if callable(identifier):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in ACTIVATIONS:
        return ACTIVATIONS[identifier.lower()]
    raise ConfigError(f"unknown activation {identifier!r}; {valid_names_hint(ACTIVATIONS)}, or a callable.")


def serialize(activation) -> str:
    name = getattr(activation, "__name__", None)
    if ACTIVATIONS.get(name) is not activation:
        raise ConfigError(f"the activation {activation!r} is not one of the named activations, so a saved model "
                          f"could not rebuild it; {valid_names_hint(ACTIVATIONS)}.")
    return name
