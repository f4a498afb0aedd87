"""Crash tests: a training run killed with SIGKILL at random points mid-epoch, twice (the second kill
hits a run that had itself resumed), and resumed with the same command ends bitwise equal to an
uninterrupted run (2 workers with gloo; one process resumes in tests/engine/test_checkpoint.py)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from hpctrain.distribute.spawn import free_local_port
from hpctrain.engine.checkpoint import checkpoint_files, serial_of

PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resume_program.py")
KILLS = 2  # the second kill lands in a resumed run: a resume from a resume


def _clean_env():
    return {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT", "TORCHELASTIC_RUN_ID")}


def _command(workers: int, out: str, backup: str) -> list[str]:
    if workers == 1:
        return [sys.executable, PROGRAM, out, backup]
    return [sys.executable, "-m", "hpctrain.cli", "launch", f"--nproc-per-node={workers}",
            f"--master-port={free_local_port()}", PROGRAM, out, backup]


def _newest_serial(backup: str) -> int:
    files = checkpoint_files(backup)
    return serial_of(files[0]) if files else 0


def _run_killed_once(command, backup: str, target_serial: int, delay: float) -> None:
    """Start the command, wait for checkpoint ``target_serial``, then SIGKILL every process of it."""
    process = subprocess.Popen(command, env=_clean_env(), start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _newest_serial(backup) < target_serial:
        assert process.poll() is None, f"the run ended before checkpoint {target_serial}: " + process.stderr.read(
        ).decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(delay)
    assert process.poll() is None  # killed mid-run, not after it finished
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()


def _result(out: str):
    arrays = np.load(out)
    with open(out + ".json") as f:
        return [arrays[key] for key in arrays.files], json.load(f)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference run's weights and History, per number of workers (run once each)."""
    results = {}

    def get(workers: int):
        if workers not in results:
            folder = tmp_path_factory.mktemp(f"reference-{workers}")
            out = str(folder / "reference.npz")
            done = subprocess.run(_command(workers, out, str(folder / "backup")), env=_clean_env(),
                                  capture_output=True, text=True, timeout=240)
            assert done.returncode == 0, done.stderr[-3000:]
            results[workers] = _result(out)
            assert results[workers][1]["world_size"] == workers
        return results[workers]

    return get


def _assert_equal_runs(out: str, reference) -> None:
    weights, meta = _result(out)
    reference_weights, reference_meta = reference
    assert len(weights) == len(reference_weights) == 4
    for ours, theirs in zip(weights, reference_weights):
        assert ours.dtype == np.float32 and np.array_equal(ours, theirs)
    assert meta["history"] == reference_meta["history"]  # every epoch's logs, bit for bit


# Two workers: the group's restart and every worker's resume; one process resumes in tests/engine/test_checkpoint.py.
@pytest.mark.parametrize("workers", [2])
def test_sigkilled_twice_and_resumed_equals_the_uninterrupted_run(tmp_path, workers, uninterrupted):
    reference = uninterrupted(workers)

    out, backup = str(tmp_path / "run.npz"), str(tmp_path / "backup")
    points = np.random.default_rng(workers)
    for _ in range(KILLS):  # 14 saves in all (102 steps, every 7): the kills fit with room to spare
        target = _newest_serial(backup) + int(points.integers(1, 4))
        _run_killed_once(_command(workers, out, backup), backup, target, delay=float(points.uniform(0, 0.05)))
        assert not os.path.exists(out)
    killed_at = _newest_serial(backup)
    assert killed_at >= KILLS
    done = subprocess.run(_command(workers, out, backup), env=_clean_env(), capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_equal_runs(out, reference)
    assert checkpoint_files(backup) == []  # delete_checkpoint=True: removed after the successful end


def test_a_worker_killed_under_max_restarts_restarts_the_group_which_resumes_exactly(tmp_path, uninterrupted):
    out, marker = str(tmp_path / "elastic.npz"), str(tmp_path / "died-once")
    command = [sys.executable, "-m", "hpctrain.cli", "launch", "--nproc-per-node=2", "--max-restarts=1",
               f"--master-port={free_local_port()}", PROGRAM, out, str(tmp_path / "backup"), marker]
    done = subprocess.run(command, env=_clean_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert os.path.exists(marker)  # rank 1 did SIGKILL itself at its 50th step
    assert "exitcode: -9" in done.stderr  # torchrun saw the dead worker and restarted the group
    _assert_equal_runs(out, uninterrupted(2))
