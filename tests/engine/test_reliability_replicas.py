"""Spawned replicas: they die with their parent and leave no folder or shared memory behind."""

import os
import signal
import subprocess
import sys
import time

import pytest

from hpctrain.distribute import spawn

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(os.path.dirname(HERE)), "src")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="replica lifetimes are checked on Linux")


@pytest.fixture
def replica_path(monkeypatch):
    """The replicas import the test model from here."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([SRC, HERE]))


def _gone(pid: int) -> bool:
    """Not running: no such process, or a zombie waiting for a reaper."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def _leftovers(temporary: str, parent: int) -> list[str]:
    folders = [name for name in os.listdir(temporary) if name.startswith(f"hpctrain-replicas-{parent}-")]
    blocks = [name for name in os.listdir("/dev/shm") if name.startswith(f"hpctrain-{parent}-")]
    return folders + blocks


@pytest.mark.parametrize("kill", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_replicas_die_with_their_parent_and_leave_nothing_behind(tmp_path, replica_path, kill):
    temporary, markers = tmp_path / "tmp", tmp_path / "markers"
    temporary.mkdir(), markers.mkdir()
    env = {**os.environ, "TMPDIR": str(temporary)}
    parent = subprocess.Popen([sys.executable, os.path.join(HERE, "spawn_parent.py"), str(markers)], env=env)
    try:
        assert _wait_until(lambda: len(os.listdir(markers)) == 2 or parent.poll() is not None, 300)
        assert parent.poll() is None, "the parent ended before its replicas trained"
        replicas = [int((markers / f"rank{rank}.pid").read_text()) for rank in range(2)]
        assert _leftovers(str(temporary), parent.pid)  # the job folder and the data's blocks, while training
        parent.send_signal(kill)
        parent.wait()
        assert _wait_until(lambda: all(_gone(pid) for pid in replicas), 10), "a replica outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    if kill == signal.SIGKILL:  # nothing runs in a killed process: the next start tidies up
        spawn.remove_stale_leftovers(str(temporary))
    assert _leftovers(str(temporary), parent.pid) == []
