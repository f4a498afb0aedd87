"""A pytest plugin that runs the tests shipped in the Keras wheel (``keras/src/**/_test.py``).

Keras's own repository runs them with a root ``conftest.py`` that the wheel does not ship; this
module stands in for it: it registers Keras's markers, skips ``requires_trainable_backend`` tests
where Keras's conftest would, and is importable as ``conftest`` for ``from conftest import
skip_if_backend``.

With ``HPCTRAIN_KERAS_SUITE_SEAM=1`` it imports :mod:`hpctrain.keras` first, so that every test
module imports a Keras whose ``compile``/``fit``/``evaluate``/``predict`` go through hpctrain's
seam; without it Keras runs as shipped (``KERAS_BACKEND=torch``), the baseline.
``HPCTRAIN_KERAS_SUITE_REPORT=path`` writes each test's outcome there as JSON
(``{"node id": "passed" | "failed" | "skipped"}``; a failure in setup or teardown counts).
"""

from __future__ import annotations

import json
import os
import sys

import pytest

if os.environ.get("HPCTRAIN_KERAS_SUITE_SEAM") == "1":
    import hpctrain.keras  # noqa: F401  (installs the seam before any test imports keras)

sys.modules.setdefault("conftest", sys.modules[__name__])


def _backend() -> str:
    from keras.src.backend import backend

    return backend()


def skip_if_backend(given_backend, reason):
    return pytest.mark.skipif(_backend() == given_backend, reason=reason)


def pytest_configure(config):
    config.addinivalue_line("markers", "requires_trainable_backend: needs a backend that trains")
    config.addinivalue_line("markers", "multi_device: needs several devices")


def pytest_collection_modifyitems(config, items):
    untrainable = _backend() in ("numpy", "openvino")
    for item in items:
        if untrainable and "requires_trainable_backend" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="the backend does not train"))


_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report):
    if report.failed:
        _outcomes[report.nodeid] = "failed"
    elif report.skipped:
        _outcomes.setdefault(report.nodeid, "skipped")
    elif report.when == "call":
        _outcomes.setdefault(report.nodeid, "passed")


def pytest_collectreport(report):
    if report.failed:  # a test module that does not import
        _outcomes[report.nodeid] = "failed"


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("HPCTRAIN_KERAS_SUITE_REPORT")
    if path:
        with open(path, "w") as file:
            json.dump(dict(sorted(_outcomes.items())), file, indent=1)
