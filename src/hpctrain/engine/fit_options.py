"""Keras's ``fit`` options about which samples count how much, and which batches an epoch takes:
``sample_weight``, ``class_weight``, ``steps_per_epoch``, ``validation_steps``, ``validation_freq``."""

from __future__ import annotations

import math

import torch

from hpctrain.arguments import is_number, is_whole_number
from hpctrain.engine import validation
from hpctrain.engine.data import Columns, WeightedTargets, to_tensor
from hpctrain.engine.metrics import class_indices
from hpctrain.errors import ConfigError, InputError, warn


def with_sample_weight(targets: torch.Tensor, sample_weight, *, rows: int, name: str = "sample_weight"):
    """``targets`` paired with one weight per sample, checked; unchanged when no weights are given."""
    if sample_weight is None:
        return targets
    weights = to_tensor(sample_weight, name=name, device=targets.device).to(torch.float32)
    if weights.dim() == 2 and weights.shape[1] == 1:
        weights = weights.reshape(-1)
    if weights.dim() != 1 or weights.shape[0] != rows:
        raise InputError(f"{name} must hold one weight per sample, shaped ({rows},); got shape "
                         f"{tuple(weights.shape)}.")
    validation.check_finite(weights, name=name)
    return WeightedTargets(targets, weights)


def with_class_weight(targets, class_weight: dict):
    """Keras's ``class_weight``: each sample weighted by its class's entry (1.0 for classes not listed).

    The class is the label itself, the argmax of a one-hot row, or a rounded single-unit label.
    """
    if not isinstance(class_weight, dict) or not class_weight:
        raise ConfigError(f"class_weight must be a dict {{class index: weight}}; got {class_weight!r}.")
    if isinstance(targets, Columns):
        raise ConfigError("class_weight is for a model with one output (as in Keras); for several outputs, give "
                          "sample_weight.")
    if isinstance(targets, WeightedTargets):
        raise ConfigError("class_weight and sample_weight were both given; give one of them (Keras accepts "
                          "only one). To combine them, multiply the class weights into sample_weight.")
    if any(not is_whole_number(key) or key < 0 for key in class_weight):
        raise ConfigError(f"class_weight keys must be class indices (whole numbers >= 0); got {sorted(class_weight)}.")
    for key, weight in class_weight.items():
        if not is_number(weight) or not math.isfinite(weight):
            raise ConfigError(f"class_weight for class {key} is {weight!r}; each class weight must be a finite number "
                              "(1.0 leaves a class as it is). Fix or leave out that entry.")
    classes = class_indices(targets)
    classes = classes.round().to(torch.int64) if classes.is_floating_point() else classes
    table = torch.ones(max(max(class_weight), int(classes.max()) if classes.numel() else 0) + 1,
                       device=targets.device)
    for key, weight in class_weight.items():
        table[key] = float(weight)
    return WeightedTargets(targets, table[classes])


def has_weights(data) -> bool:
    return isinstance(getattr(data, "y", None), WeightedTargets)


def check_steps(value, name: str):
    return None if value is None else validation.check_positive_int(value, name=name)


def check_validation_freq(validation_freq):
    if isinstance(validation_freq, (list, tuple)):
        if not validation_freq or any(not is_whole_number(e) or e < 1 for e in validation_freq):
            raise ConfigError(f"validation_freq as a list names the epochs (counted from 1) to validate after; got "
                              f"{validation_freq!r}.")
        return {int(epoch) for epoch in validation_freq}
    return validation.check_positive_int(validation_freq, name="validation_freq",
                                         hint="Or give a list of epochs, e.g. [1, 5, 10].")


def validates_after(epoch: int, validation_freq) -> bool:
    """Keras's rule, with ``epoch`` counted from 0: every ``validation_freq``-th epoch, or the listed ones."""
    if isinstance(validation_freq, set):
        return epoch + 1 in validation_freq
    return (epoch + 1) % validation_freq == 0


class BatchStream:
    """Keras's epoch iterator when ``steps_per_epoch`` (or ``validation_steps``) is given.

    An epoch takes the next ``steps`` batches of a pass over the data that carries on across
    epochs; a pass that runs out ends the epoch early, with Keras's warning, and the next epoch
    starts a new pass (a new shuffle). ``new_pass()`` returns the batches of one pass.
    """

    def __init__(self, new_pass, steps: int, batches_per_pass: int | None, *, what: str = "training"):
        self.new_pass = new_pass
        self.steps = steps
        self.batches_per_pass = batches_per_pass
        self.what = what
        self.current = None
        self.seen = 0

    def epoch(self):
        if self.current is None:
            self.current, self.seen = iter(self.new_pass()), 0
        for done in range(self.steps):
            batch = None if self._pass_done() else next(self.current, None)
            if batch is None:
                warn(f"the {self.what} data ran out after {done} of this epoch's {self.steps} steps (a pass over it "
                     f"is {self.seen} batches); this epoch ends early and the next one starts a new pass. Lower the "
                     "steps, or give more data.")
                self.current = None
                return
            self.seen += 1
            yield batch
        if self._pass_done():
            self.current = None

    def _pass_done(self) -> bool:
        return self.batches_per_pass is not None and self.seen >= self.batches_per_pass
