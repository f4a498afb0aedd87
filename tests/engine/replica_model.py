"""A tiny model with the interface spawned replicas drive (``use_plan`` then ``fit``), training a
torch module with the native ``Trainer``; importable by the replicas (they do not run the test)."""

import os

import torch

import hpctrain


class TinyReplicaModel:
    """``marker_dir``: each replica writes ``rank<N>.pid`` there as it starts training."""

    def __init__(self, marker_dir=None):
        self.marker_dir = marker_dir
        torch.manual_seed(0)
        self.module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        self.trainer = None

    def use_plan(self, plan):
        self.trainer = hpctrain.Trainer(self.module, loss=torch.nn.CrossEntropyLoss(), optimizer="sgd", plan=plan)

    def fit(self, **arguments):
        if self.marker_dir is not None:
            path = os.path.join(self.marker_dir, f"rank{self.trainer.plan.rank}.pid")
            with open(path + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(path + ".tmp", path)
        return self.trainer.fit(**arguments)
