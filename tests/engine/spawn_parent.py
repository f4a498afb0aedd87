"""A parent process training 2 spawned replicas for a long time, for the fault-injection tests:
``python spawn_parent.py MARKER_DIR``. The replicas write their pids into MARKER_DIR."""

import sys

import numpy as np
import torch

from hpctrain.distribute.spawn import fit_in_replicas
from replica_model import TinyReplicaModel

if __name__ == "__main__":
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 4)).astype("float32"), rng.integers(0, 3, size=64)
    fit_in_replicas(TinyReplicaModel(sys.argv[1]), [torch.device("cpu")] * 2, 60.0,
                    dict(x=x, y=y, epochs=1_000_000, batch_size=16, verbose=0))
