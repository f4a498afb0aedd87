"""The layer contract in pyproject.toml ([tool.importlinter]) holds, and breaks on an upward import.

Layers point down: cli -> the front ends (keras, tfcompat, run_script) -> distribute -> engine ->
hardware | datasets -> errors | arguments. The engine, hardware and distribute never import Keras,
so the native torch API does not pay for importing it.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import hpctrain

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(hpctrain.__file__).resolve().parent


def _lint_imports() -> str:
    """The ``lint-imports`` beside this interpreter (import-linter is in the test extra)."""
    beside = Path(sys.executable).parent / "lint-imports"
    found = str(beside) if beside.exists() else shutil.which("lint-imports")
    if found is None:
        pytest.fail("lint-imports is not installed: pip install -e '.[test]' installs import-linter")
    return found


def _run_lint(project: Path, source: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with ``project``'s pyproject.toml, on the hpctrain package under ``source``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(source), os.environ.get("PYTHONPATH")]))}
    # No cache: a copy of the package must be analysed afresh, not read back from an earlier run.
    return subprocess.run([_lint_imports(), "--no-cache"], cwd=project, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_import_contracts_are_kept():
    result = _run_lint(ROOT, PACKAGE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout
    assert "0 broken" in result.stdout


def _copy_of_the_project(tmp_path: Path) -> tuple[Path, Path]:
    project = tmp_path / "project"
    source = project / "src"
    shutil.copytree(PACKAGE, source / "hpctrain", ignore=shutil.ignore_patterns("__pycache__", "*.so", "build"))
    shutil.copy(ROOT / "pyproject.toml", project / "pyproject.toml")
    return project, source


def _add_line(module: Path, line: str) -> None:
    module.write_text(module.read_text() + f"\n{line}\n")


def test_an_upward_import_from_the_engine_breaks_the_build(tmp_path):
    project, source = _copy_of_the_project(tmp_path)
    _add_line(source / "hpctrain" / "engine" / "flat.py", "import hpctrain.keras  # an upward import")

    result = _run_lint(project, source)

    print(result.stdout)  # shown with -s: the report a developer sees
    assert result.returncode != 0
    assert "Layers point down: front ends -> distribute -> engine -> hardware -> errors BROKEN" in result.stdout
    assert "The engine, hardware and distribute layers never import Keras BROKEN" in result.stdout
    assert "hpctrain.engine.flat -> hpctrain.keras" in result.stdout


def test_reaching_up_through_the_top_level_package_breaks_the_build(tmp_path):
    project, source = _copy_of_the_project(tmp_path)
    _add_line(source / "hpctrain" / "hardware" / "cpu.py", "import hpctrain  # resolves the front ends by name")

    result = _run_lint(project, source)

    assert result.returncode != 0
    assert "Below the front ends, nothing reaches up through the top-level hpctrain package BROKEN" in result.stdout
    assert "hpctrain.hardware.cpu -> hpctrain" in result.stdout


def test_distribute_importing_the_engine_keeps_the_contract(tmp_path):
    # distribute sits above the engine and the hardware layer: it may use both.
    project, source = _copy_of_the_project(tmp_path)
    _add_line(source / "hpctrain" / "distribute" / "launch.py", "import hpctrain.engine.flat, hpctrain.hardware.cpu")

    assert _run_lint(project, source).returncode == 0


@pytest.mark.parametrize("package", ["hpctrain.engine", "hpctrain.hardware", "hpctrain.distribute"])
def test_importing_a_lower_layer_leaves_keras_unimported(package):
    code = ("import sys, importlib; importlib.import_module(sys.argv[1]); "
            "print(sorted(m for m in sys.modules if m == 'keras' or m.startswith(('keras.', 'hpctrain.keras'))))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE.parent), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code, package], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
