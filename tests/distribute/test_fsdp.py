"""Sharded data parallelism (FSDP2) on the autograd executor trains as one process does.

Two CPU processes (gloo) train a plain ``torch.nn.Module`` through :class:`hpctrain.engine.Trainer`
with ``sharding="fsdp"``: each holds half of every weight, and the whole weights gathered after two
fits of one epoch (the second continuing on the shards) equal one process's two epochs on the same
global batches, to 1e-5 (Adam's fused kernel on the shards; SGD's foreach kernel, as its fused one
takes no shards).
"""

import dataclasses
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hpctrain.distribute import fsdp
from hpctrain.distribute.communicator import Communicator
from hpctrain.engine import Trainer
from hpctrain.errors import ConfigError
from test_ddp import OPTIMIZERS, WORLD, _data, _module, _plan, _train


def _train_sharded(plan) -> tuple[dict, dict]:
    x, y = _data()
    weights, local_rows = {}, {}
    for name, optimizer in OPTIMIZERS.items():
        trainer = Trainer(_module(), loss=torch.nn.CrossEntropyLoss(), optimizer=optimizer, metrics=["accuracy"],
                          plan=plan)
        for _ in range(2):  # a second fit continues on the shards the first left
            trainer.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        weights[name] = fsdp.full_weights(trainer.module)
        local_rows[name] = trainer.module.body[0].weight.to_local().shape[0]
    return weights, local_rows


def _replica(rank: int, store_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=WORLD)
    try:
        communicator = Communicator(rank, WORLD, WORLD, torch.device("cpu"), sharding="fsdp")
        weights, local_rows = _train_sharded(dataclasses.replace(_plan(), world_size=WORLD, rank=rank,
                                                                 communicator=communicator))
        for name in weights:
            np.savez(os.path.join(out_dir, f"{name}.rank{rank}.npz"), *weights[name],
                     local_rows=np.array(local_rows[name]))
    finally:
        dist.destroy_process_group()


def test_two_sharded_replicas_train_as_one_process(tmp_path):
    reference = _train(_plan())
    mp.spawn(_replica, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    for name in OPTIMIZERS:
        for rank in range(WORLD):
            with np.load(tmp_path / f"{name}.rank{rank}.npz") as saved:
                weights = [saved[f"arr_{i}"] for i in range(len(reference[name]))]
                assert int(saved["local_rows"]) == 16 // WORLD  # the first layer's 16 rows, halved
            for got, want in zip(weights, reference[name], strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"{name}, rank {rank}")
        assert not np.allclose(reference[name][0], _module().body[0].weight.detach().numpy())  # it did train


def test_an_unknown_sharding_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match=r"sharding='zero3' is not one of None \(every replica holds the whole "
                                          r"model\) or 'fsdp'"):
        Communicator(0, 2, 2, torch.device("cpu"), sharding="zero3")


def test_an_optimizer_that_updates_whole_weights_is_refused():
    class WholeWeightUpdate:  # as Keras's own optimizer, applied to the variables' whole Parameters
        param_groups = []

    with pytest.raises(ConfigError, match=r"sharding='fsdp' needs a PyTorch optimizer to update the shards, but this "
                                          r"model's updates are applied by WholeWeightUpdate to whole weights\. Use "
                                          r"Adam, AdamW or SGD"):
        fsdp.shard(_module(), optimizer=WholeWeightUpdate())
