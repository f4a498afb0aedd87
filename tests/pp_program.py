"""A pipeline-parallel program for the tests:
python pp_program.py OUT STAGES REPLICAS MICROBATCHES SCHEDULE[,SCHEDULE...]

Under hpctrain launch / torchrun, one stage of one replica per process. For each schedule in turn,
the same processes train the test model; every rank writes what it returns (weights, History,
evaluate, predict) to OUT.SCHEDULE.rankN (.npz and .json). With one replica, a native
nn.Sequential cut by measured time trains too.
"""

import json
import sys

import numpy as np

import hpctrain as tf
from pipeline_case import FIT, NATIVE, data, keras_model, native_network

out, stages, replicas, microbatches, schedules = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5].split(",")
x, y = data()
for schedule in schedules:
    strategy = tf.distribute.PipelineStrategy(stages=stages, microbatches=microbatches, schedule=schedule,
                                              data_parallel=replicas, cut_points=[1, 2][:stages - 1])
    with strategy.scope():
        model = keras_model()
    history = model.fit(x, y, verbose=2, **FIT)
    evaluation = model.evaluate(x, y, verbose=0)
    predictions = model.predict(x, verbose=0)
    arrays, meta = {"predictions": predictions}, {"world_size": model.plan.world_size}
    if replicas == 1:
        native = strategy.trainer(native_network(), **NATIVE)
        meta["native_history"] = native.fit(x, y, epochs=2, batch_size=16, verbose=0).history
        meta["native_cut"] = list(strategy.split().cut_points)
        arrays.update({f"native{i}": p.detach().numpy() for i, p in enumerate(native.module.parameters())})
    rank = strategy.plan().rank
    np.savez(f"{out}.{schedule}.rank{rank}.npz", *model.get_weights(), **arrays)
    with open(f"{out}.{schedule}.rank{rank}.json", "w") as f:
        json.dump({"history": history.history, "evaluate": evaluation, **meta}, f)
