"""A pipeline-parallel program for the tests:
python pp_program.py OUT STAGES REPLICAS MICROBATCHES SCHEDULE[,SCHEDULE...]

Under hpctrain launch / torchrun, one stage of one replica per process. For each schedule in turn,
the same processes train the test's torch.nn.Sequential through the native API
(``strategy.trainer``), cut by measured time; every rank writes what it returns (weights,
History, evaluate, predict, the cut) to OUT.SCHEDULE.rankN (.npz and .json).
"""

import json
import sys

import numpy as np

import hpctrain as tf
from pipeline_case import FIT, NATIVE, data, native_network

out, stages, replicas, microbatches, schedules = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5].split(",")
x, y = data()
for schedule in schedules:
    strategy = tf.distribute.PipelineStrategy(stages=stages, microbatches=microbatches, schedule=schedule,
                                              data_parallel=replicas)
    trainer = strategy.trainer(native_network(), **NATIVE)
    history = trainer.fit(x, y, verbose=2, **FIT)
    evaluation = trainer.evaluate(x, y, verbose=0)
    predictions = trainer.predict(x, verbose=0)
    rank = strategy.plan().rank
    arrays = {"predictions": predictions}
    arrays.update({f"weight{i}": p.detach().numpy() for i, p in enumerate(trainer.module.parameters())})
    np.savez(f"{out}.{schedule}.rank{rank}.npz", **arrays)
    with open(f"{out}.{schedule}.rank{rank}.json", "w") as f:
        json.dump({"history": history.history, "evaluate": evaluation, "world_size": trainer.plan.world_size,
                   "cut": list(trainer.split.cut_points)}, f)
