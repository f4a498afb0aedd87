"""What distribute hands the engine, and takes from it, is all in use: no field or class is left dead.

A strategy hands the engine a :class:`Plan`; the engine's metric classes are what distribute and
the front ends accumulate with. A field nothing reads, or a class nothing makes, is dead weight
that readers still have to understand (``Plan.data_placement`` was one).
"""

import ast
import dataclasses
from pathlib import Path

import hpctrain
from hpctrain.hardware.plan import EngineChoices, HardwarePlan, ProcessGroupFacts

SOURCE = Path(hpctrain.__file__).resolve().parent


def _trees(*, skip: Path):
    for path in sorted(SOURCE.rglob("*.py")):
        if path != skip:
            yield ast.parse(path.read_text(), filename=str(path))


def _attributes_read(*, skip: Path) -> set[str]:
    return {node.attr for tree in _trees(skip=skip) for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load)}


def _names_used(*, skip: Path) -> set[str]:
    used = set()
    for tree in _trees(skip=skip):
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                used.add(node.id)
            elif isinstance(node, ast.Attribute):
                used.add(node.attr)
            elif isinstance(node, ast.alias):
                used.add(node.name.rsplit(".", 1)[-1])
    return used


def test_every_plan_field_is_read_outside_the_plan():
    plan_module = SOURCE / "hardware" / "plan.py"
    read = _attributes_read(skip=plan_module)
    # The plan is made of three parts; their fields are the decisions (each part explains its own).
    fields = [field.name for part in (HardwarePlan, EngineChoices, ProcessGroupFacts)
              for field in dataclasses.fields(part) if field.name != "reasons"]
    unread = [name for name in fields if name not in read]
    assert unread == [], f"Plan fields that no code outside hardware/plan.py reads: {unread}"


def test_every_metric_class_is_used_outside_its_module():
    metrics_module = SOURCE / "engine" / "metrics.py"
    tree = ast.parse(metrics_module.read_text())
    defined = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    inside = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    used = _names_used(skip=metrics_module) | inside
    unused = [name for name in defined if name not in used]
    assert unused == [], f"classes in engine/metrics.py that no code makes or names: {unused}"
