"""Keras learning-rate schedules: ``Adam(learning_rate=ExponentialDecay(...))``.

A schedule maps the optimizer's update count to a rate, as Keras does: the update numbered
``step`` (counting from 0) uses ``schedule(step)``. The engine evaluates it on the host from the
step count it already keeps, so a schedule costs no device round trip per step.
"""

from __future__ import annotations

import math

from hpctrain.arguments import is_number
from hpctrain.errors import ConfigError


class LearningRateSchedule:
    """Base class: subclasses implement ``__call__(step) -> rate`` (and ``get_config`` to be saved)."""

    def __call__(self, step):
        raise NotImplementedError(f"learning-rate schedule {type(self).__name__} must override __call__(self, step).")

    def get_config(self) -> dict:
        raise NotImplementedError(f"learning-rate schedule {type(self).__name__} must override get_config() to be "
                                  "saved.")

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)


def _check_decay_steps(decay_steps, name: str = "decay_steps") -> None:
    if not is_number(decay_steps) or decay_steps <= 0:
        raise ConfigError(f"{name} must be a number > 0; got {decay_steps!r}.")


class ExponentialDecay(LearningRateSchedule):
    """``initial_learning_rate * decay_rate ** (step / decay_steps)``; ``staircase`` floors the exponent."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False, name="ExponentialDecay"):
        _check_decay_steps(decay_steps)
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.decay_rate = decay_rate
        self.staircase = staircase
        self.name = name

    def __call__(self, step):
        exponent = float(step) / self.decay_steps
        if self.staircase:
            exponent = math.floor(exponent)
        return self.initial_learning_rate * self.decay_rate ** exponent

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "staircase": self.staircase, "name": self.name}


class CosineDecay(LearningRateSchedule):
    """Optional linear warmup from ``initial_learning_rate`` to ``warmup_target`` over ``warmup_steps``,
    then a cosine from there (or from ``initial_learning_rate`` without warmup) down to ``alpha``
    times it over ``decay_steps``; constant after."""

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay", warmup_target=None,
                 warmup_steps=0):
        _check_decay_steps(decay_steps)
        if warmup_target is not None and warmup_steps <= 0:
            raise ConfigError(f"CosineDecay with warmup_target={warmup_target} needs warmup_steps > 0; "
                              f"got {warmup_steps!r}.")
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.alpha = alpha
        self.name = name
        self.warmup_target = warmup_target
        self.warmup_steps = warmup_steps

    def _decayed(self, step: float, decay_from: float) -> float:
        cosine = 0.5 * (1.0 + math.cos(math.pi * step / self.decay_steps))
        return decay_from * ((1.0 - self.alpha) * cosine + self.alpha)

    def __call__(self, step):
        step = float(step)
        if self.warmup_target is None:
            return self._decayed(min(step, self.decay_steps), self.initial_learning_rate)
        step = min(step, self.decay_steps + self.warmup_steps)
        if step < self.warmup_steps:
            delta = self.warmup_target - self.initial_learning_rate
            return delta * step / self.warmup_steps + self.initial_learning_rate
        return self._decayed(step - self.warmup_steps, self.warmup_target)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "alpha": self.alpha, "name": self.name, "warmup_target": self.warmup_target,
                "warmup_steps": self.warmup_steps}


class PiecewiseConstantDecay(LearningRateSchedule):
    """``values[0]`` while ``step <= boundaries[0]``, ``values[i]`` while ``boundaries[i-1] < step <=
    boundaries[i]``, and ``values[-1]`` after the last boundary."""

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        boundaries, values = list(boundaries), list(values)
        if len(boundaries) != len(values) - 1:
            raise ConfigError(f"PiecewiseConstantDecay needs one value more than boundaries; got {len(boundaries)} "
                              f"boundaries {boundaries} and {len(values)} values {values}.")
        if any(later <= earlier for earlier, later in zip(boundaries, boundaries[1:])):
            raise ConfigError(f"PiecewiseConstantDecay boundaries must increase strictly; got {boundaries}.")
        self.boundaries = boundaries
        self.values = values
        self.name = name

    def __call__(self, step):
        for boundary, value in zip(self.boundaries, self.values):
            if step <= boundary:
                return value
        return self.values[-1]

    def get_config(self):
        return {"boundaries": self.boundaries, "values": self.values, "name": self.name}


SCHEDULES = {cls.__name__: cls for cls in (ExponentialDecay, CosineDecay, PiecewiseConstantDecay)}


def serialize(schedule: LearningRateSchedule) -> dict:
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}


def deserialize(config: dict, custom_objects=None) -> LearningRateSchedule:
    classes = {**SCHEDULES, **(custom_objects or {})}
    name = config.get("class_name")
    if name not in classes:
        raise ConfigError(f"unknown learning-rate schedule {name!r}; known: {', '.join(sorted(classes))} "
                          "(pass custom_objects for your own).")
    return classes[name].from_config(config["config"])


__all__ = ["CosineDecay", "ExponentialDecay", "LearningRateSchedule", "PiecewiseConstantDecay", "deserialize",
           "serialize"]
