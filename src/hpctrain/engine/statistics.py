"""Statistics that the forward pass updates instead of the optimizer: batch norm's running mean
and variance (torch buffers) and a front end's moving statistics kept as Parameters that take no
gradient (Keras's BatchNormalization).

A step whose loss or gradients are not finite must leave no trace in them either: its update is
skipped, and :class:`KeptStatistics` puts back the values from before it, on the device and without
a host sync (one ``torch.where`` per tensor per step).
"""

from __future__ import annotations

import torch

from hpctrain.errors import ConfigError


def running_statistics(module: torch.nn.Module, extra=(), *, floating_only: bool = False) -> list[torch.Tensor]:
    """Every tensor the forward may update: the module's buffers (floating point, and integer ones
    such as batch norm's ``num_batches_tracked`` unless ``floating_only``), the tensors a layer names
    in a ``_statistics`` attribute, and ``extra`` (what a front end supplies). Each tensor once."""
    found = []
    for part in module.modules():
        found += [b for b in part.buffers(recurse=False) if b.is_floating_point() or not floating_only]
        found += [getattr(part, name) for name in sorted(getattr(part, "_statistics", ()))]
    found += [tensor for tensor in extra if tensor.is_floating_point() or not floating_only]
    unique, seen = [], set()
    for tensor in found:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            unique.append(tensor)
    return unique


def check_statistics(statistics) -> list[torch.Tensor]:
    """``Trainer(statistics=...)``: the tensors the forward updates that are not buffers."""
    if statistics is None:
        return []
    if isinstance(statistics, torch.Tensor):
        statistics = [statistics]
    try:
        tensors = list(statistics)
    except TypeError:
        tensors = None
    if tensors is None or not all(isinstance(tensor, torch.Tensor) for tensor in tensors):
        raise ConfigError(f"statistics must be a list of tensors that the module's forward updates (such as "
                          f"moving averages kept as Parameters); got {type(statistics).__name__}. Pass e.g. "
                          "[layer.moving_mean, layer.moving_variance], or leave it out.")
    trainable = [tuple(tensor.shape) for tensor in tensors if tensor.requires_grad]
    if trainable:
        raise ConfigError(f"statistics holds {len(trainable)} tensor(s) that take gradients (shapes {trainable}); "
                          "name only those the forward updates itself, which have requires_grad=False.")
    return tensors


class KeptStatistics:
    """The values of ``tensors`` after the last good step."""

    def __init__(self, tensors: list[torch.Tensor]):
        self.tensors = tensors
        with torch.no_grad():
            self.kept = [tensor.detach().clone() for tensor in tensors]

    def __bool__(self) -> bool:
        return bool(self.tensors)

    def take(self) -> None:
        """The current values become the good ones (at the start of an epoch, after a restore)."""
        with torch.no_grad():
            for tensor, kept in zip(self.tensors, self.kept):
                kept.copy_(tensor)

    def settle(self, found_inf: torch.Tensor) -> None:
        """After a step's check: where ``found_inf`` is up, the statistics go back to the kept ones;
        else the current ones are kept."""
        bad = found_inf > 0
        with torch.no_grad():
            for tensor, kept in zip(self.tensors, self.kept):
                tensor.copy_(torch.where(bad, kept, tensor))
                kept.copy_(tensor)
