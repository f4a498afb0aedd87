"""Communicator collectives stay inside the communicator's group (2 CPU processes, gloo)."""

import json
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hpctrain.distribute.communicator import Communicator

WORLD = 2


def _collectives(rank: int, store_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=WORLD)
    try:
        device = torch.device("cpu")
        world = Communicator(rank, WORLD, WORLD, device)
        # new_group is collective: every rank makes every group, in the same order.
        alone = [dist.new_group([r]) for r in range(WORLD)]
        mine = Communicator(0, 1, 1, device, group=alone[rank])
        value = float(10 * (rank + 1))  # rank 0 holds 10, rank 1 holds 20
        results = {
            "world_min": world.all_reduce_min_(torch.tensor([value])).item(),
            "world_sum": world.all_reduce_sum_(torch.tensor([value])).item(),
            "group_min": mine.all_reduce_min_(torch.tensor([value])).item(),
            "group_sum": mine.all_reduce_sum_(torch.tensor([value])).item(),
        }
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
    finally:
        dist.destroy_process_group()


def test_min_and_sum_reduce_over_the_communicators_group_only(tmp_path):
    mp.spawn(_collectives, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(WORLD)]
    for rank, result in enumerate(results):
        own = 10.0 * (rank + 1)
        assert result["world_min"] == 10.0 and result["world_sum"] == 30.0
        # A group of one reduces to the rank's own value; over the whole world rank 1 would read 10.
        assert result["group_min"] == own, f"rank {rank}: all_reduce_min_ reduced outside its group"
        assert result["group_sum"] == own
