"""A pipeline-parallel program for the tests:
python pp_program.py OUT STAGES REPLICAS MICROBATCHES SCHEDULE[,SCHEDULE...] [sequential|functional]

Under hpctrain launch / torchrun, one stage of one replica per process. For each schedule in turn,
the same processes train the test's torch.nn.Sequential through the native API
(``strategy.trainer``), cut by measured time; every rank writes what it returns (weights,
History, evaluate, predict, the cut) to OUT.SCHEDULE.rankN (.npz and .json). With a last argument,
a Keras model of that kind is compiled in the strategy's scope and trained by its own ``fit``.
"""

import json
import sys

import numpy as np

import hpctrain as tf
from pipeline_case import FIT, KERAS_FIT, NATIVE, compile_keras, data, keras_model, native_network

out, stages, replicas, microbatches, schedules = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5].split(",")
x, y = data()


def keras_run(strategy, kind):
    with strategy.scope():
        model = keras_model(kind)
        compile_keras(model)
    history = model.fit(x, y, verbose=2, **KERAS_FIT)
    evaluation = model.evaluate(x, y, verbose=0, return_dict=True)
    optimizer = {f"optimizer{i}": v.numpy() for i, v in enumerate(model.optimizer.variables)}
    return (history, evaluation, model.predict(x, verbose=0), [w for w in model.get_weights()],
            strategy.last_trainer, optimizer)


def native_run(strategy):
    trainer = strategy.trainer(native_network(), **NATIVE)
    history = trainer.fit(x, y, verbose=2, **FIT)
    return (history, trainer.evaluate(x, y, verbose=0), trainer.predict(x, verbose=0),
            [p.detach().numpy() for p in trainer.module.parameters()], trainer, {})


kind = sys.argv[6] if len(sys.argv) > 6 else None
for schedule in schedules:
    strategy = tf.distribute.PipelineStrategy(stages=stages, microbatches=microbatches, schedule=schedule,
                                              data_parallel=replicas)
    history, evaluation, predictions, weights, trainer, optimizer = (keras_run(strategy, kind) if kind
                                                                      else native_run(strategy))
    rank = strategy.plan().rank
    arrays = {"predictions": predictions, **optimizer}
    arrays.update({f"weight{i}": w for i, w in enumerate(weights)})
    np.savez(f"{out}.{schedule}.rank{rank}.npz", **arrays)
    with open(f"{out}.{schedule}.rank{rank}.json", "w") as f:
        json.dump({"history": history.history, "evaluate": evaluation, "world_size": trainer.plan.world_size,
                   "cut": list(strategy.last_stage.split.cut_points), "weights": len(weights)}, f)
