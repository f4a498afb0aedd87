"""The collectives the engine needs, over ``torch.distributed``; the engine sees only this interface."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from hpctrain.errors import ConfigError


class Communicator:
    """One process's handle on the group: sums, broadcasts and row gathers across replicas.

    ``group``: a subgroup (e.g. the replicas of one pipeline stage); ``rank`` and ``world_size``
    are then positions in it, and ``source`` of a broadcast is a position in it too.
    ``sharding``: ``None`` (each replica holds the whole model) or ``"fsdp"`` (each holds a share of
    the weights, gradients and optimizer state; see :mod:`hpctrain.distribute.fsdp`).
    """

    def __init__(self, rank: int, world_size: int, local_world_size: int, device: torch.device, group=None,
                 sharding: str | None = None):
        self.rank = rank
        self.sharding = check_sharding(sharding)
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
        if isinstance(tensor, DTensor):
            return tensor  # a shard (sharding="fsdp"): each replica holds its own part of one model
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

    def data_parallel(self, module: torch.nn.Module, optimizer=None) -> torch.nn.Module:
        """``module`` under ``DistributedDataParallel`` over this group: its backward sums the
        gradients over the replicas, bucketed and overlapped with the backward itself. With
        ``sharding="fsdp"``, the module sharded in place by FSDP2 instead, ``optimizer`` then
        updating the shards.

        Summed, not averaged: each replica's loss is already weighted by its share of the global
        batch. Buffers are not broadcast at each forward: each replica's batch statistics follow
        its own batches and the engine averages them at each epoch's end. ``static_graph``: the
        steps use the same parameters every time, so a parameter the forward never uses is found
        once (not searched for at every step) and keeps ``None`` as its gradient, as in one process.
        """
        if not any(p.requires_grad for p in module.parameters()):
            return module  # nothing to sum (DDP refuses such a module)
        if self.sharding == "fsdp":
            from hpctrain.distribute.fsdp import shard

            return shard(module, self.group, optimizer)
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" and self.device.index is not None else None
        # The option's name since PyTorch 2.13; broadcast_buffers before (now deprecated).
        no_buffer_sync = ("forward_sync_buffers" if "forward_sync_buffers" in
                          inspect.signature(DistributedDataParallel).parameters else "broadcast_buffers")
        replicated = DistributedDataParallel(module, device_ids=device_ids, process_group=self.group,
                                             static_graph=True, **{no_buffer_sync: False})
        replicated.register_comm_hook(self.group, _summed)
        return replicated


SHARDINGS = (None, "fsdp")


def check_sharding(sharding):
    if sharding not in SHARDINGS:
        raise ConfigError(f"sharding={sharding!r} is not one of None (every replica holds the whole model) or "
                          "'fsdp' (each replica holds a share of the weights, gradients and optimizer state).")
    return sharding


def _summed(group, bucket):  # no return annotation: DDP checks it, and this module's are strings
    """DDP's communication hook: a bucket's gradients summed over ``group`` (DDP's own hook averages)."""
    work = dist.all_reduce(bucket.buffer(), op=dist.ReduceOp.SUM, group=group, async_op=True)
    return work.get_future().then(lambda future: future.value()[0])
