"""Data parallel on the autograd executor runs on DistributedDataParallel and trains as one process does.

Two CPU processes (gloo) train a plain ``torch.nn.Module`` through :class:`hpctrain.engine.Trainer`;
their weights after two epochs equal one process's on the same global batches, to 1e-5.
"""

import dataclasses
import os

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hpctrain.distribute.communicator import Communicator
from hpctrain.engine import Trainer
from hpctrain.hardware import make_plan

WORLD = 2
ROWS = 97  # six batches of 16 and a last one of 1 row: one replica's share of it is empty


def _data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(ROWS, 6)).astype("float32")
    y = rng.integers(0, 3, size=ROWS)
    return x, y


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
        self.unused = torch.nn.Linear(2, 2)  # no gradient: Adam must leave it as one process does

    def forward(self, x):
        return self.body(x)


def _module():
    torch.manual_seed(11)
    return _Net()


def _sgd(params, device):
    return torch.optim.SGD(params, lr=0.1)  # plain SGD: a gradient off by a factor shows in the weights


OPTIMIZERS = {"adam": "adam", "sgd": _sgd}


def _train(plan) -> dict[str, list[np.ndarray]]:
    x, y = _data()
    weights = {}
    for name, optimizer in OPTIMIZERS.items():
        trainer = Trainer(_module(), loss=torch.nn.CrossEntropyLoss(), optimizer=optimizer, metrics=["accuracy"],
                          plan=plan)
        trainer.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        weights[name] = trainer.get_weights()
    return weights


def _plan():
    return make_plan(device="cpu", threads=1, executor="autograd", compile=False)


def _replica(rank: int, store_file: str, out_dir: str) -> None:
    import hpctrain.engine.step as step

    def refuse(*args, **kwargs):
        raise AssertionError("the hand-written all-reduce ran; DistributedDataParallel should sum the gradients")

    step.sum_gradients = refuse
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=WORLD)
    try:
        plan = dataclasses.replace(_plan(), world_size=WORLD, rank=rank,
                                   communicator=Communicator(rank, WORLD, WORLD, torch.device("cpu")))
        for name, weights in _train(plan).items():
            np.savez(os.path.join(out_dir, f"{name}.rank{rank}.npz"), *weights)
    finally:
        dist.destroy_process_group()


def test_two_replicas_on_ddp_train_as_one_process(tmp_path):
    reference = _train(_plan())
    mp.spawn(_replica, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    for name in OPTIMIZERS:
        for rank in range(WORLD):
            with np.load(tmp_path / f"{name}.rank{rank}.npz") as saved:
                weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
            assert len(weights) == len(reference[name])
            for got, want in zip(weights, reference[name], strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"{name}, rank {rank}")
        assert not np.allclose(reference[name][0], _module().body[0].weight.detach().numpy())  # it did train
