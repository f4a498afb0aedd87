"""The plan's three frozen parts, the reasons grouped by part, and a plan held still through fit's epochs."""

import dataclasses

import numpy as np
import pytest
import torch

from hpctrain import make_plan
from hpctrain.engine.callbacks import Callback
from hpctrain.engine.trainer import Trainer
from hpctrain.hardware.plan import EngineChoices, HardwarePlan, Plan, ProcessGroupFacts


def test_each_part_is_frozen_and_reads_through_the_plan():
    plan = make_plan(device="cpu", threads=1, executor="autograd")
    assert isinstance(plan.hardware, HardwarePlan) and isinstance(plan.engine, EngineChoices)
    assert isinstance(plan.group, ProcessGroupFacts)
    assert (plan.device, plan.threads, plan.executor, plan.world_size, plan.rank, plan.communicator) == (
        torch.device("cpu"), 1, "autograd", 1, 0, None)
    for part, field in ((plan.hardware, "threads"), (plan.engine, "executor"), (plan.group, "world_size"),
                        (plan, "hardware")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(part, field, 2)


def test_a_choice_replaces_only_the_part_that_makes_it():
    plan = make_plan(device="cpu", threads=1)
    chosen = plan.with_choice("executor", "static", "every layer and the loss have a known backward")
    assert chosen.hardware is plan.hardware and chosen.group is plan.group
    assert chosen.executor == "static" and plan.executor == "auto"
    assert ("executor", "static (every layer and the loss have a known backward)") in chosen.engine.reasons
    replaced = dataclasses.replace(plan, world_size=4, rank=3, tune_threads=True)
    assert (replaced.world_size, replaced.rank, replaced.tune_threads) == (4, 3, True)
    assert replaced.engine is plan.engine and replaced.reasons == plan.reasons
    assert Plan(device=torch.device("cpu"), threads=2).field_values()["threads"] == 2
    with pytest.raises(TypeError, match=r"Plan got unknown fields \['thread'\]"):
        Plan(device=torch.device("cpu"), thread=2)


def test_explain_groups_every_reason_under_its_part():
    plan = make_plan(device="cpu", threads=1).with_reason("learning_rate", "0.001 (as given)")
    lines = plan.explain().splitlines()
    titles = ["[hardware]", "[engine: settled at fit]", "[process group]"]
    assert [line for line in lines if line.startswith("[")] == titles
    sections = {title: lines[lines.index(title) + 1:(lines.index(titles[i + 1]) if i + 1 < 3 else None)]
                for i, title in enumerate(titles)}
    assert sections["[hardware]"][:2] == ["device: cpu (given explicitly)", "threads: 1 (given explicitly)"]
    assert [line.split(":")[0] for line in sections["[engine: settled at fit]"]] == [
        "executor", "compile", "learning_rate"]
    assert [line.split(":")[0] for line in sections["[process group]"]] == ["workers"]
    assert len(lines) == len(plan.reasons) + 3


class _PlanWatcher(Callback):
    """Notes the trainer's plan object at every epoch and batch; tries to replace it once."""

    def __init__(self):
        super().__init__()
        self.seen, self.refused = [], None

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(self.model.plan)
        if epoch == 0:
            try:
                self.model.plan = self.model.plan.with_choice("compile", True, "asked while training")
            except RuntimeError as error:
                self.refused = str(error)
            self.model.revise_plan("cuda_graph", False, "noted while training")

    def on_batch_end(self, batch, logs=None):
        self.seen.append(self.model.plan)


def test_fit_settles_the_plan_once_and_holds_it_through_the_epochs():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 4)).astype("float32"), rng.integers(0, 3, size=64)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    trainer = Trainer(module, loss=torch.nn.CrossEntropyLoss(), optimizer="adam",
                      plan=make_plan(device="cpu", threads=1, compile=False))
    watcher = _PlanWatcher()
    trainer.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[watcher])
    assert len(watcher.seen) == 2 + 2 * 4 and all(plan is watcher.seen[0] for plan in watcher.seen)
    assert watcher.seen[0].executor in ("static", "autograd")  # settled before the first step
    assert watcher.refused == ("the plan was settled before the first training step and is held until fit "
                               "returns; note a choice changed while training with revise_plan(key, value, reason).")
    assert trainer.plan is not watcher.seen[0]  # the revision joined it as fit returned
    assert "cuda_graph: False (noted while training)" in trainer.plan.explain().splitlines()
    assert trainer.plan.compile is False
    trainer.plan = trainer.plan.with_choice("compile", False, "between fits")  # outside a fit: allowed
