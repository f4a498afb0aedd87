"""The pipeline schedule is an executor behind the engine's protocol; a stage is trained by a plain Trainer."""

import inspect
import json
import os
import pkgutil
import subprocess
import sys

import hpctrain.distribute
from hpctrain.distribute.pipeline_executor import PipelineExecutor
from hpctrain.distribute.pipeline_stage import PipelineStage
from hpctrain.distribute.spawn import free_local_port
from hpctrain.engine.executors.base import Executor
from hpctrain.engine.model_parallel import ModelPart
from hpctrain.engine.trainer import Trainer

SRC = os.path.dirname(os.path.dirname(os.path.abspath(hpctrain.distribute.__file__)))

# One stage per launched process: fit, then what the engine reports about how the steps ran.
PROGRAM = '''
import json, sys
import torch
import hpctrain as tf
from hpctrain.errors import ConfigError

torch.manual_seed(0)
x, y = torch.randn(48, 6), torch.randint(0, 3, (48,))
strategy = tf.distribute.PipelineStrategy(stages=2, microbatches=2)
net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
trainer = strategy.trainer(net, loss=torch.nn.CrossEntropyLoss(), optimizer="sgd", metrics=["accuracy"])
history = trainer.fit(x, y, epochs=2, batch_size=16, verbose=0)
try:
    trainer.fit(x, y, epochs=1, batch_size=16, steps_per_epoch=2, verbose=0)
    refusal = None
except ConfigError as error:
    refusal = str(error)
rank = strategy.plan().rank
with open(f"{sys.argv[1]}.rank{rank}.json", "w") as f:
    json.dump({"trainer_class": f"{type(trainer).__module__}.{type(trainer).__qualname__}",
               "executor_class": f"{type(trainer.executor).__module__}.{type(trainer.executor).__qualname__}",
               "executor_name": trainer.executor.name, "explain": trainer.plan.explain(),
               "loss": history.history["loss"], "refusal": refusal}, f)
'''


def _distribute_classes():
    for module_info in pkgutil.iter_modules(hpctrain.distribute.__path__, "hpctrain.distribute."):
        module = __import__(module_info.name, fromlist=["_"])
        for _, value in inspect.getmembers(module, inspect.isclass):
            if value.__module__ == module.__name__:
                yield value


def test_no_class_of_distribute_subclasses_the_trainer():
    classes = list(_distribute_classes())
    assert PipelineStage in classes and PipelineExecutor in classes
    assert [c.__name__ for c in classes if issubclass(c, Trainer)] == []
    assert issubclass(PipelineStage, ModelPart) and issubclass(PipelineExecutor, Executor)


def test_the_pipeline_uses_only_the_engines_public_names():
    for name in ("pipeline.py", "pipeline_stage.py", "pipeline_executor.py", "pipeline_config.py"):
        with open(os.path.join(SRC, "distribute", name)) as f:
            imports = [line for line in f if line.startswith("from hpctrain.engine")]
        private = [line.strip() for line in imports if any(part.strip().startswith("_")
                                                            for part in line.split(" import ")[1].split(","))]
        assert private == [], name


def test_a_pipelined_fit_runs_on_a_plain_trainer_with_the_pipeline_executor(tmp_path):
    program = tmp_path / "stage_program.py"
    program.write_text(PROGRAM)
    out = str(tmp_path / "stage")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT", "TORCHELASTIC_RUN_ID")}
    command = [sys.executable, "-m", "hpctrain.cli", "launch", "--nproc-per-node=2",
               f"--master-port={free_local_port()}", str(program), out]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = []
    for rank in range(2):
        with open(f"{out}.rank{rank}.json") as f:
            reports.append(json.load(f))
    for report in reports:
        assert report["trainer_class"] == "hpctrain.engine.trainer.Trainer"
        assert report["executor_class"] == "hpctrain.distribute.pipeline_executor.PipelineExecutor"
        assert report["executor_name"] == "pipeline schedule"
        assert "executor: autograd (stage " in report["explain"]
        assert "of a 1f1b pipeline: its steps run by the pipeline schedule)" in report["explain"]
        assert report["refusal"] == ("steps_per_epoch is not supported with PipelineStrategy yet; every epoch is "
                                     "one pass over the data. Leave steps_per_epoch out.")
    assert reports[0]["loss"] == reports[1]["loss"]  # computed on the last stage, broadcast to every rank
    assert len(reports[0]["loss"]) == 2
