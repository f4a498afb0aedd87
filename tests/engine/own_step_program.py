"""A native-API program with its own train_step, for the data-parallel test: python own_step_program.py OUT.

Under hpctrain launch each process is one replica of MirroredStrategy; rank 0 writes the weights to OUT.
"""

import sys

import numpy as np
import torch

import hpctrain
from hpctrain.engine import Trainer
from test_user_train_step import ClippingTrainer, _data, _module  # noqa: F401  (the same trainer and data)

strategy = hpctrain.distribute.MirroredStrategy()
trainer = ClippingTrainer(_module(), loss=torch.nn.CrossEntropyLoss(),
                          optimizer=lambda params, device: torch.optim.SGD(params, lr=0.01), plan=strategy.plan())
x, y = _data()
trainer.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
assert isinstance(trainer, Trainer)
if trainer.plan.rank == 0:
    np.savez(sys.argv[1], *[p.detach().numpy() for p in trainer.module.parameters()])
