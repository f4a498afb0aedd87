"""``get_weights`` of a module FSDP2 sharded: its DTensor parameters are gathered whole."""

import numpy as np
import pytest
import torch
import torch.distributed as dist

from hpctrain import make_plan
from hpctrain.engine.trainer import Trainer, host_array

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")


@pytest.fixture
def one_process_group():
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        from torch.distributed.device_mesh import init_device_mesh

        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def test_get_weights_gathers_the_parameters_fully_shard_made_dtensors(one_process_group):
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    before = [tensor.detach().numpy().copy() for tensor in module.state_dict().values()]
    fully_shard(module, mesh=one_process_group)
    assert all(isinstance(param, DTensor) for param in module.parameters())
    trainer = Trainer(module, loss=torch.nn.CrossEntropyLoss(), optimizer="sgd",
                      plan=make_plan(device="cpu", threads=1))
    weights = trainer.get_weights()
    assert [w.shape for w in weights] == [(4, 3), (4,), (2, 4), (2,)]
    assert all(np.array_equal(got, want) for got, want in zip(weights, before))
    assert np.array_equal(host_array(next(module.parameters())), before[0])
