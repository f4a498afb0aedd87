"""Spawned replicas: they die with their parent and leave no folder or shared memory behind, and
an error one of them raises reaches the user with its own type and message."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import hpctrain
from hpctrain.distribute import spawn
from hpctrain.errors import InputError, NonFiniteLossError, ReplicaFailed

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # the replicas import the model by this module name (see replica_path)
from replica_model import TinyReplicaModel  # noqa: E402
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


def _data(rows=32):
    rng = np.random.default_rng(0)
    return rng.normal(size=(rows, 4)).astype("float32"), rng.integers(0, 3, size=rows)


def _single_process_error(x, y, kind):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    trainer = hpctrain.Trainer(module, loss=torch.nn.CrossEntropyLoss(), optimizer="sgd",
                               plan=hpctrain.make_plan(device="cpu"))
    with pytest.raises(kind) as error:
        trainer.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    return str(error.value)


def test_an_input_error_in_a_replica_reaches_the_user_as_an_input_error(replica_path):
    x, y = _data()
    y[5] = 7  # a class the model's 3 outputs do not have
    expected = _single_process_error(x, y, InputError)
    with pytest.raises(InputError) as error:
        spawn.fit_in_replicas(TinyReplicaModel(), [torch.device("cpu")] * 2, 60.0,
                              dict(x=x, y=y, epochs=1, batch_size=16, shuffle=False, verbose=0))
    assert str(error.value) == expected
    assert isinstance(error.value.__cause__, ReplicaFailed) and "replica rank" in str(error.value.__cause__)


def test_a_non_finite_loss_in_a_replica_reaches_the_user_as_a_non_finite_loss_error(replica_path):
    x, y = _data()
    x[:16] = 3e38
    with pytest.raises(NonFiniteLossError, match="the training loss or its gradients became NaN or infinite at "
                                                 "epoch 1, step 1"):
        spawn.fit_in_replicas(TinyReplicaModel(), [torch.device("cpu")] * 2, 60.0,
                              dict(x=x, y=y, epochs=1, batch_size=16, shuffle=False, verbose=0))
