"""Keras's own trainer and callback tests (shipped in the Keras wheel), run with or without the seam.

``run(seam=...)`` runs the chosen test files of the installed Keras in a subprocess, through
:mod:`keras_tests_plugin`, and returns each test's outcome. ``python tests/keras_suite/keras_suite.py``
records the outcomes on plain Keras on torch (no hpctrain) into ``baseline.json`` next to this file;
``test_keras_own_tests.py`` checks that the seam fails no test beyond the ones recorded there.

What runs:

* ``callbacks/*_test.py`` except ``tensorboard_test.py`` and ``swap_ema_weights_test.py`` (they
  import TensorFlow at module level) and ``orbax_checkpoint_test.py`` (it needs the
  ``orbax-checkpoint`` package; without it every one of its tests fails on plain Keras too).
* from ``trainers/trainer_test.py``, the tests that train a ``keras.Model`` (Sequential, functional
  or subclassed): the others train ``ExampleModel``-style mixins of Keras's backend trainer and a
  layer, which are not ``keras.Model`` subclasses, so the seam's ``fit``/``evaluate``/``predict``
  never run for them (importing hpctrain still touches them: its package ``__getattr__`` once broke
  their ``jit_compile=True`` fits); the whole file takes 40 minutes on a shared 2-core machine.
  :func:`trainer_tests_of_models` picks the ``keras.Model`` ones by their source.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BASELINE = HERE / "baseline.json"

CALLBACK_FILES = [
    "callbacks/backup_and_restore_test.py",
    "callbacks/callback_test.py",
    "callbacks/csv_logger_test.py",
    "callbacks/early_stopping_test.py",
    "callbacks/lambda_callback_test.py",
    "callbacks/learning_rate_scheduler_test.py",
    "callbacks/model_checkpoint_test.py",
    "callbacks/monitor_callback_test.py",
    "callbacks/reduce_lr_on_plateau_test.py",
    "callbacks/remote_monitor_test.py",
    "callbacks/terminate_on_nan_test.py",
]
TRAINER_FILE = "trainers/trainer_test.py"
LEFT_OUT = {
    "callbacks/tensorboard_test.py": "imports TensorFlow at module level (not installed with Keras on torch)",
    "callbacks/swap_ema_weights_test.py": "imports TensorFlow at module level (not installed with Keras on torch)",
    "callbacks/orbax_checkpoint_test.py": "needs the orbax-checkpoint package; without it all its tests fail on "
                                          "plain Keras too",
    "trainers/trainer_test.py (tests of ExampleModel-style mixins)": "they train a mixin of Keras's backend trainer "
                                                                     "and a layer, not a keras.Model: the seam's "
                                                                     "fit/evaluate/predict never run for them; the "
                                                                     "whole file takes 40 minutes here",
}
_MODEL_USE = re.compile(r"models\.Model\b|keras\.Model\b|Sequential\(|keras\.src\.Functional")


def keras_src() -> Path:
    spec = importlib.util.find_spec("keras")
    return Path(next(iter(spec.submodule_search_locations))) / "src"


def keras_version() -> str:
    text = (keras_src() / "version.py").read_text()
    return re.search(r"__version__\s*=\s*\"([^\"]+)\"", text).group(1)


def trainer_tests_of_models(path: Path) -> list[str]:
    """The test methods of ``trainer_test.py`` whose body builds a ``keras.Model``."""
    source = path.read_text()
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if (isinstance(item, ast.FunctionDef) and item.name.startswith("test_")
                        and _MODEL_USE.search(ast.get_source_segment(source, item) or "")):
                    names.append(item.name)
    return sorted(set(names))


def selection(trainer_tests: list[str]) -> str:
    """``-k``: every test outside trainer_test.py, and the named ones in it."""
    return "not trainer_test or " + " or ".join(trainer_tests)


def run(*, seam: bool, files: list[str], select: str, timeout: float = 900) -> dict[str, str]:
    """Each test's outcome (``passed``/``failed``/``skipped``), by node id relative to ``keras/src``."""
    src = keras_src()
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "outcomes.json"
        env = dict(os.environ, KERAS_BACKEND="torch", HPCTRAIN_KERAS_SUITE_SEAM="1" if seam else "0",
                   HPCTRAIN_KERAS_SUITE_REPORT=str(report), HPCTRAIN_CACHE_DIR=str(Path(scratch) / "cache"),
                   PYTHONPATH=os.pathsep.join([str(HERE), str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "keras_tests_plugin", "-q",
                   "-c", os.devnull, "--rootdir", str(src), "-W", "ignore",
                   *[str(src / f) for f in files], "-k", select]
        done = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if not report.exists():
            raise RuntimeError(f"Keras's tests did not run (exit {done.returncode}):\n{done.stdout[-4000:]}"
                               f"\n{done.stderr[-4000:]}")
        outcomes = json.loads(report.read_text())
    outcomes["__log__"] = done.stdout[-20000:]
    return outcomes


def record() -> dict:
    """Run the selection on plain Keras on torch and write ``baseline.json``."""
    trainer_tests = trainer_tests_of_models(keras_src() / TRAINER_FILE)
    files = [*CALLBACK_FILES, TRAINER_FILE]
    select = selection(trainer_tests)
    outcomes = run(seam=False, files=files, select=select)
    outcomes.pop("__log__")
    baseline = {
        "keras": keras_version(),
        "backend": "torch",
        "files": files,
        "trainer_tests": trainer_tests,
        "left_out": LEFT_OUT,
        "counts": {kind: sum(1 for o in outcomes.values() if o == kind) for kind in ("passed", "failed", "skipped")},
        "failing_on_plain_keras": sorted(n for n, o in outcomes.items() if o == "failed"),
        "passing_on_plain_keras": sorted(n for n, o in outcomes.items() if o == "passed"),
    }
    BASELINE.write_text(json.dumps(baseline, indent=1) + "\n")
    return baseline


if __name__ == "__main__":
    print(json.dumps(record()["counts"]))
