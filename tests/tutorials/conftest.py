"""The tutorial tests run each program in a subprocess of its own, so they need none of the
in-process setup of tests/conftest.py: no Keras import and seed in this process, and the C++ step
loop taken from (or built once into) a cache that outlives the session instead of rebuilt in a
fresh temporary directory, so that the programs, like a user's, find it there."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _native_step_loop_built():
    try:
        from hpctrain.engine import native

        # Fixed before the per-test cache directories of tests/conftest.py move the default.
        os.environ.setdefault("HPCTRAIN_NATIVE_DIR", native.native_dir())
        native.build()
    except Exception:  # noqa: BLE001 - without it the engine trains on its Python loop
        pass


@pytest.fixture(autouse=True)
def _seeded():
    yield
