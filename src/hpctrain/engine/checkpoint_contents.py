"""What a training checkpoint must hold before a run resumes from it.

A file whose checksum holds can still carry fields no run wrote (a crafted or hand-edited file:
epoch -5, a missing part): :func:`check_run_payload` rejects it with :class:`CheckpointError`, so
the loader treats it as damaged and falls back to the previous checkpoint.
"""

from __future__ import annotations

import torch

from hpctrain.arguments import is_whole_number
from hpctrain.errors import CheckpointError

_POSITION_COUNTS = {"epoch": 0, "step": 0, "global_step": 0, "world_size": 1}  # field -> its least value
_PARTS = {"position": dict, "model": dict, "optimizer": dict, "rng": dict, "replicas": list, "callbacks": list}


def check_run_payload(payload, path: str) -> None:
    """Raises :class:`CheckpointError` naming the first field that is not what ``fit`` writes."""
    if not isinstance(payload, dict):
        _invalid(path, "its content", payload, "a mapping of the run's parts")
    for part, kind in _PARTS.items():
        if not isinstance(payload.get(part), kind):
            _invalid(path, f"the part {part!r}", payload.get(part), f"a {kind.__name__}")
    position = payload["position"]
    for field, least in _POSITION_COUNTS.items():
        value = position.get(field)
        if not is_whole_number(value) or value < least:
            _invalid(path, f"position.{field}", value, f"a whole number >= {least}")
    if not isinstance(position.get("finished"), bool):
        _invalid(path, "position.finished", position.get("finished"), "true or false")
    _check_tensors(payload, path)
    if len(payload["replicas"]) != position["world_size"]:
        _invalid(path, "the replicas' parts", f"{len(payload['replicas'])} of them",
                 f"one per replica ({position['world_size']})")
    for rank, part in enumerate(payload["replicas"]):
        if not isinstance(part, dict) or not all(isinstance(part.get(key), torch.Tensor)
                                                 for key in ("torch", "metrics")):
            _invalid(path, f"replicas[{rank}]", part, "its RNG state and metric sums as tensors")
    _check_made_from(payload.get("made_from"), path)
    optimizer = payload["optimizer"]
    if not isinstance(optimizer.get("groups"), list) or not isinstance(optimizer.get("state"), dict):
        _invalid(path, "the optimizer's part", sorted(optimizer), "its groups (a list) and state (a mapping)")


def _check_tensors(payload: dict, path: str) -> None:
    for name, value in payload["model"].items():
        if not isinstance(value, torch.Tensor):
            _invalid(path, f"model[{name!r}]", value, "a tensor")
    order = payload.get("order")
    if order is not None and (not isinstance(order, torch.Tensor) or order.dim() != 1
                              or order.is_floating_point()):
        _invalid(path, "order", order, "no order or a row permutation (a 1-D integer tensor)")


_MADE_FROM = {"model": dict, "optimizer": str, "settings": dict, "data": dict, "world_size": int}


def _check_made_from(made_from, path: str) -> None:
    """What the run was made from (absent in checkpoints written before it was recorded)."""
    if made_from is None:
        return
    if not isinstance(made_from, dict):
        _invalid(path, "made_from", made_from, "a record of the model, optimizer, data and replicas")
    for field, kind in _MADE_FROM.items():
        if not isinstance(made_from.get(field), kind):
            _invalid(path, f"made_from.{field}", made_from.get(field), f"a {kind.__name__}")


def _invalid(path: str, field: str, value, expected: str) -> None:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    raise CheckpointError(f"{path} holds {field} = {shown}, where a checkpoint written by fit holds {expected}; "
                          "the file was changed after it was written.")
