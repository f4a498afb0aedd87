"""What a run was made from, recorded in each checkpoint, and what changed at a resume.

A checkpoint records the model's structure (each weight's name and shape), the optimizer's
class and settings as the run began, the training data's size, batch size and shuffling, and the
number of replicas. A resume that differs is refused with a :class:`CheckpointError` listing each
change, unless ``CheckpointConfig(allow_changes=True)`` accepts them: a new optimizer then starts
with fresh state, changed settings are taken as given now, and changed data restarts the
interrupted epoch. A changed model or replica count cannot resume.
"""

from __future__ import annotations

import dataclasses

import torch

from hpctrain.engine.optim import LazyOptimizer
from hpctrain.errors import CheckpointError

# Group entries that choose a kernel for the device rather than change the computation.
_KERNEL_CHOICES = {"params", "fused", "foreach", "capturable", "differentiable", "initial_lr"}


def _setting(value):
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, (list, tuple)):
        items = [_setting(item) for item in value]
        return None if any(item is _UNSET for item in items) else list(items)
    return value if value is None or isinstance(value, (bool, int, float, str)) else _UNSET


_UNSET = object()


def optimizer_settings(optimizer) -> dict:
    return group_settings(optimizer.param_groups[0])


def group_settings(group: dict) -> dict:
    """A parameter group's settings that change the computation (not the kernel choices)."""
    settings = {key: _setting(value) for key, value in group.items() if key not in _KERNEL_CHOICES}
    return {key: value for key, value in sorted(settings.items()) if value is not _UNSET}


def optimizer_name(optimizer) -> str:
    return (optimizer.optimizer_class if isinstance(optimizer, LazyOptimizer) else type(optimizer)).__name__


def made_from(trainer, shuffler) -> dict:
    """This run as a checkpoint records it."""
    data, batch_size = trainer._fit_batches or (None, None)
    return {
        "model": {name: list(tensor.shape) for name, tensor in trainer.module.state_dict().items()},
        "optimizer": optimizer_name(trainer.optimizer),
        "settings": optimizer_settings(trainer.optimizer),
        "data": {"samples": None if data is None else len(data), "batch_size": batch_size,
                 "shuffle": shuffler is not None},
        "world_size": trainer.plan.world_size,
    }


@dataclasses.dataclass
class Changes:
    blocking: list[str]  # what no resume can accept
    accepted: list[str]
    optimizer: bool = False  # another optimizer class: its saved state is not loaded
    settings: bool = False  # the settings given now win over the saved ones
    data: bool = False  # the interrupted epoch starts over


def compare(saved: dict, now: dict, saved_settings: dict) -> Changes:
    """``saved_settings``: the optimizer's settings as last saved (a callback may have changed
    the rate since the run began; continuing with those is no change either)."""
    changes = Changes(blocking=_model_changes(saved["model"], now["model"]), accepted=[])
    if saved["world_size"] != now["world_size"]:
        changes.blocking.append(f"the replicas changed from {saved['world_size']} to {now['world_size']}")
    if saved["optimizer"] != now["optimizer"]:
        changes.optimizer = changes.settings = True
        changes.accepted.append(f"the optimizer changed from {saved['optimizer']} to {now['optimizer']}")
    elif now["settings"] not in (saved["settings"], saved_settings):
        changes.settings = True
        changes.accepted += [f"the optimizer's {key} changed from {saved['settings'].get(key)!r} to {value!r}"
                             for key, value in now["settings"].items() if saved["settings"].get(key) != value]
    before, after = saved["data"], now["data"]
    for key, what in (("samples", "{} to {} samples"), ("batch_size", "batch size {} to {}"),
                      ("shuffle", "shuffle={} to shuffle={}")):
        if before.get(key) != after.get(key):
            changes.data = True
            changes.accepted.append("the training data changed from " + what.format(before.get(key), after.get(key)))
    return changes


def _model_changes(saved: dict, now: dict) -> list[str]:
    shown = [f"{name} shaped {tuple(saved[name])} is now {tuple(shape)}" for name, shape in now.items()
             if name in saved and list(saved[name]) != list(shape)]
    shown += [f"{name} is new" for name in now if name not in saved]
    shown += [f"{name} is gone" for name in saved if name not in now]
    return ["the model changed: " + ", ".join(shown)] if shown else []


def check_resume(path: str, changes: Changes, allow_changes: bool) -> None:
    """Raises unless nothing changed or the changes are accepted."""
    if changes.blocking:
        raise CheckpointError(
            f"{path} was made by another run: {'; '.join(changes.blocking + changes.accepted)}. A changed model "
            "cannot resume (its saved weights do not fit), nor can a changed number of replicas (each has its "
            "own saved part). Resume with the same model and replicas, or give a new checkpoint directory to "
            "start over.")
    if changes.accepted and not allow_changes:
        raise CheckpointError(
            f"{path} was made by another run: {'; '.join(changes.accepted)}. Resume with the same settings, or "
            "accept the changes with CheckpointConfig(..., allow_changes=True) (a new optimizer starts with fresh "
            "state, changed settings are taken as given now, changed data restarts the interrupted epoch), or give "
            "a new checkpoint directory to start over.")
