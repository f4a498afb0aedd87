"""Keras's own trainer and callback tests pass with the seam installed wherever they pass on plain
Keras on torch.

The tests shipped in the installed Keras wheel (chosen in :mod:`keras_suite`) run in a subprocess
that imports ``hpctrain.keras`` first; every test that fails there must be one that also fails on
plain Keras on torch, as recorded in ``baseline.json`` (``python tests/keras_suite/keras_suite.py``
records it again, for another Keras release).
"""

from __future__ import annotations

import json

import keras_suite
import pytest


@pytest.fixture(scope="module")
def baseline():
    recorded = json.loads(keras_suite.BASELINE.read_text())
    installed = keras_suite.keras_version()
    if installed != recorded["keras"]:
        pytest.skip(f"baseline.json was recorded with Keras {recorded['keras']}; Keras {installed} is installed "
                    "(python tests/keras_suite/keras_suite.py records it again)")
    pytest.importorskip("jax", reason="Keras's trainer_test.py imports jax")
    return recorded


def test_keras_own_tests_pass_with_the_seam(baseline):
    outcomes = keras_suite.run(seam=True, files=baseline["files"],
                               select=keras_suite.selection(baseline["trainer_tests"]))
    log = outcomes.pop("__log__")
    failed = {name for name, outcome in outcomes.items() if outcome == "failed"}
    new_failures = sorted(failed - set(baseline["failing_on_plain_keras"]))
    assert not new_failures, (f"{len(new_failures)} of Keras's own tests pass on plain Keras on torch but fail "
                              f"with the seam: {new_failures}\n{log}")
    # A test that no longer runs (renamed, deselected, skipped) would hide a failure: every test
    # that passes on plain Keras must have run and passed.
    missing = sorted(name for name in baseline["passing_on_plain_keras"] if outcomes.get(name) != "passed")
    assert not missing, f"tests that pass on plain Keras did not pass with the seam: {missing}\n{log}"
