"""Data parallelism: N replicas (gloo, one process each) train exactly as one process does."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import hpctrain as tf
from conftest import REPO
from hpctrain.distribute.runtime import GroupSpec, group_spec_from_environment, join_group
from hpctrain.distribute.strategy import parse_device
from hpctrain.engine.data import ResidentData
from hpctrain.errors import ConfigError

PROGRAM = os.path.join(REPO, "tests", "dp_program.py")
HPCTRAIN = [sys.executable, "-m", "hpctrain.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env():
    # The test process itself must not look like a launched worker.
    return {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT", "TORCHELASTIC_RUN_ID")}


def run_program(tmp_path, replicas: int, optimizer: str, executor: str, kill_rank=None):
    out = str(tmp_path / f"r{replicas}-{optimizer}-{executor}.npz")
    args = [PROGRAM, out, optimizer, executor] + ([str(kill_rank)] if kill_rank is not None else [])
    if replicas == 1:
        command = [sys.executable, *args]
    else:
        command = [*HPCTRAIN, "launch", f"--nproc-per-node={replicas}", f"--master-port={free_port()}", *args]
    start = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=_clean_env())
    return result, out, time.monotonic() - start


def load(out):
    arrays = np.load(out)
    with open(out + ".json") as f:
        return arrays, json.load(f)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    results = {}
    for optimizer, executor in [("adam", "static"), ("sgd", "autograd")]:
        result, out, _ = run_program(tmp, 1, optimizer, executor)
        assert result.returncode == 0, result.stderr
        results[optimizer, executor] = load(out)
    return results


@pytest.mark.parametrize("replicas, optimizer, executor", [
    (2, "adam", "static"), (3, "adam", "static"), (2, "sgd", "autograd"), (3, "sgd", "autograd"),
])
def test_replicas_equal_one_process(tmp_path, single_process, replicas, optimizer, executor):
    result, out, _ = run_program(tmp_path, replicas, optimizer, executor)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (arrays, meta), (reference, reference_meta) = load(out), single_process[optimizer, executor]
    assert meta["replicas"] == meta["world_size"] == replicas and reference_meta["world_size"] == 1
    assert meta["executor"] == executor
    for key in reference.files:  # every weight, and predict()'s rows in input order
        np.testing.assert_allclose(arrays[key], reference[key], atol=1e-5, rtol=0)
    for key, values in reference_meta["history"].items():
        np.testing.assert_allclose(meta["history"][key], values, atol=1e-5)
    np.testing.assert_allclose(meta["evaluate"], reference_meta["evaluate"], atol=1e-5)
    # One voice: only rank 0 printed the epochs.
    assert result.stdout.count("Epoch 1/4") == 1


def test_a_killed_worker_stops_the_group_quickly_and_names_the_rank(tmp_path):
    result, _, seconds = run_program(tmp_path, 2, "adam", "static", kill_rank=1)
    assert result.returncode != 0
    assert seconds < 30
    output = result.stdout + result.stderr
    assert "rank      : 1" in output or "local_rank: 1" in output or "rank 1" in output
    assert "Signal 9 (SIGKILL)" in output or "exitcode  : -9" in output


def test_device_names():
    assert parse_device("cuda:0") == torch.device("cuda", 0)
    assert parse_device("/gpu:1") == torch.device("cuda", 1)
    assert parse_device("/GPU:0") == torch.device("cuda", 0)
    assert parse_device("cpu:1") == torch.device("cpu")
    with pytest.raises(ConfigError, match="'tpu:0' is not one of the forms"):
        parse_device("tpu:0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU default")
def test_default_strategy_on_a_cpu_machine_is_one_replica(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "SLURM_PROCID", "SLURM_JOB_ID", "OMPI_COMM_WORLD_RANK"):
        monkeypatch.delenv(key, raising=False)
    strategy = tf.distribute.MirroredStrategy()
    assert strategy.num_replicas_in_sync == 1
    assert strategy.plan().world_size == 1
    with strategy.scope():
        assert tf.distribute.get_strategy() is strategy
    assert tf.distribute.get_strategy() is None


def test_several_cpu_replicas_from_a_plain_start_say_how_to_launch(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    strategy = tf.distribute.MirroredStrategy(devices=["cpu:0", "cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with pytest.raises(ConfigError, match="hpctrain launch --nproc-per-node 2"):
        strategy.plan()


def test_group_from_launcher_environments():
    spec = group_spec_from_environment({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                                        "MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "29500"})
    assert (spec.rank, spec.world_size, spec.local_rank, spec.local_world_size) == (1, 4, 1, 2)
    assert (spec.master_addr, spec.master_port, spec.launcher) == ("10.1.2.3", 29500, "torchrun")
    slurm = group_spec_from_environment({"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
                                         "SLURM_JOB_ID": "7", "MASTER_ADDR": "node1", "MASTER_PORT": "1234"})
    assert (slurm.rank, slurm.world_size, slurm.launcher) == (3, 8, "slurm")
    assert group_spec_from_environment({}) is None
    with pytest.raises(ConfigError, match="MASTER_ADDR and MASTER_PORT are not set"):
        group_spec_from_environment({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"})


def test_a_rendezvous_that_cannot_connect_fails_within_its_timeout_naming_the_address():
    port = free_port()
    spec = GroupSpec(rank=1, world_size=2, local_rank=0, local_world_size=1, master_addr="127.0.0.1",
                     master_port=port, launcher="torchrun")
    start = time.monotonic()
    with pytest.raises(ConfigError, match=rf"rank 1 could not join the process group at tcp://127.0.0.1:{port} "
                                          r"within 3 s"):
        join_group(spec, torch.device("cpu"), timeout_seconds=3)
    assert time.monotonic() - start < 30


def test_each_replica_takes_a_contiguous_share_of_every_global_batch():
    data = ResidentData(torch.arange(23.0).reshape(23, 1), torch.arange(23))
    order = torch.randperm(23, generator=torch.Generator().manual_seed(0))
    shares = [list(data.shard_batches(10, rank, 3, order=order)) for rank in range(3)]
    for step in range(3):  # batches of 10, 10 and 3 rows
        rows = torch.cat([shares[rank][step][1] for rank in range(3)])
        assert torch.equal(rows, order[step * 10:step * 10 + 10])
        assert {shares[rank][step][2] for rank in range(3)} == {min(10, 23 - step * 10)}
    assert [len(shares[rank][2][1]) for rank in range(3)] == [1, 1, 1]
