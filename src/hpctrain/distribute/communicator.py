"""The collectives the engine needs, over ``torch.distributed``; the engine sees only this interface."""

from __future__ import annotations

import torch
import torch.distributed as dist


class Communicator:
    """One process's handle on the group: sums, broadcasts and row gathers across replicas.

    ``group``: a subgroup (e.g. the replicas of one pipeline stage); ``rank`` and ``world_size``
    are then positions in it, and ``source`` of a broadcast is a position in it too.
    """

    def __init__(self, rank: int, world_size: int, local_world_size: int, device: torch.device, group=None):
        self.rank = rank
        self.world_size = world_size
        self.local_world_size = local_world_size
        self.device = device
        self.group = group

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        return tensor

    def all_reduce_min_(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN, group=self.group)
        return tensor

    def broadcast_(self, tensor: torch.Tensor, source: int = 0) -> torch.Tensor:
        dist.broadcast(tensor, group=self.group, group_src=source)
        return tensor

    def all_gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's rows, concatenated in rank order (ranks may hold different row counts)."""
        count = torch.tensor([tensor.shape[0]], device=tensor.device)
        counts = [torch.zeros_like(count) for _ in range(self.world_size)]
        dist.all_gather(counts, count, group=self.group)
        most = int(max(c.item() for c in counts))
        padded = torch.zeros((most, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        padded[:tensor.shape[0]] = tensor
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded, group=self.group)
        return torch.cat([part[:int(c.item())] for part, c in zip(gathered, counts)])

    def barrier(self) -> None:
        dist.barrier(group=self.group)
