"""What the engine's tests share: the C++ step loop, or a skip that says why it is not here."""

import functools

import pytest

from hpctrain.engine import native


def pytest_configure(config):
    config.addinivalue_line("markers", "native_loop: needs the C++ step loop; skipped, with the reason, where it "
                                       "cannot be built here")


def native_loop_or_skip():
    """The loaded :class:`~hpctrain.engine.native.StepLoop`, else a skip with the reason (another CPU, no
    compiler, a failed build; the session's conftest has built it where it can)."""
    if not native.enabled():
        pytest.skip("the C++ step loop is off here (HPCTRAIN_NATIVE=0, or not Linux)")
    built, status = _built_once()
    if not built:
        pytest.skip(status)
    return native.step_loop()


@functools.cache
def _built_once() -> tuple[bool, str]:
    """One build (or its failure) for the session, not one per test."""
    return native.build(), native.status()


def pytest_runtest_setup(item):
    if item.get_closest_marker("native_loop") is not None:
        native_loop_or_skip()


@pytest.fixture
def native_loop():
    return native_loop_or_skip()
