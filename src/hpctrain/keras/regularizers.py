"""Keras weight regularizers: a penalty added to the training loss, as Keras adds it."""

from __future__ import annotations

import torch

from hpctrain.errors import ConfigError, valid_names_hint


class Regularizer:
    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class L1L2(Regularizer):
    def __init__(self, l1=0.0, l2=0.0):
        self.l1 = float(l1)
        self.l2 = float(l2)

    def __call__(self, weight):
        penalty = weight.new_zeros(())
        if self.l1:
            penalty = penalty + self.l1 * weight.abs().sum()
        if self.l2:
            penalty = penalty + self.l2 * weight.square().sum()
        return penalty

    def get_config(self) -> dict:
        return {"l1": self.l1, "l2": self.l2}


class L1(L1L2):
    def __init__(self, l1=0.01):
        super().__init__(l1=l1)


class L2(L1L2):
    def __init__(self, l2=0.01):
        super().__init__(l2=l2)


l1 = L1
l2 = L2
l1_l2 = L1L2

REGULARIZERS = {"l1": L1, "l2": L2, "l1_l2": L1L2}


def serialize(regularizer):
    if regularizer is None:
        return None
    if not isinstance(regularizer, L1L2):
        raise ConfigError(f"the regularizer {regularizer!r} is not L1, L2 or L1L2, so a saved model could not "
                          "rebuild it.")
    return {"class_name": "L1L2", "config": regularizer.get_config()}


def get(identifier):
    if isinstance(identifier, dict) and identifier.get("class_name") == "L1L2":
        return L1L2(**identifier.get("config", {}))
    if identifier is None or callable(identifier):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in REGULARIZERS:
        return REGULARIZERS[identifier.lower()]()
    raise ConfigError(f"unknown regularizer {identifier!r}; {valid_names_hint(REGULARIZERS)}, or a callable(weight).")
