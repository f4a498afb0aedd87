"""Pipeline parallelism: stages in separate processes (gloo) train exactly as one process does."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import hpctrain as tf
from hpctrain.distribute.partition import balanced_cut_points, split_model
from hpctrain.distribute.pipeline import PipelineConfig, microbatches_for
from hpctrain.distribute.spawn import free_local_port
from hpctrain.errors import ConfigError
from pipeline_case import FIT, NATIVE, data, native_network
from test_distribute import _clean_env

HERE = os.path.dirname(os.path.abspath(__file__))
PROGRAM = os.path.join(HERE, "pp_program.py")


@pytest.fixture(scope="module")
def reference():
    """One process, the same seed and global batch: the native network's fit, evaluate and predict."""
    x, y = data()
    trainer = tf.Trainer(native_network(), **NATIVE)
    history = trainer.fit(x, y, verbose=0, **FIT)
    return dict(history=history.history, weights=[p.detach().numpy() for p in trainer.module.parameters()],
                evaluate=trainer.evaluate(x, y, verbose=0), predictions=trainer.predict(x, verbose=0))


def assert_same_history(history, expected):
    assert history.keys() == expected.keys()
    for key, values in expected.items():
        np.testing.assert_allclose(history[key], values, atol=1e-5, rtol=0)


def assert_same_weights(weights, expected):
    assert len(weights) == len(expected)
    for a, b in zip(weights, expected):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


@pytest.fixture
def plain_start(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)


def run_launched(tmp_path, stages, replicas, microbatches, schedules, keras_kind=None):
    """``keras_kind``: train pipeline_case's Keras model of that kind instead of the native network."""
    out = str(tmp_path / "pp")
    command = [sys.executable, "-m", "hpctrain.cli", "launch", f"--nproc-per-node={stages * replicas}",
               f"--master-port={free_local_port()}", PROGRAM, out, str(stages), str(replicas), str(microbatches),
               ",".join(schedules), *([keras_kind] if keras_kind else [])]
    env = _clean_env()
    env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("Epoch 1/2") == len(schedules)  # one voice: rank 0
    return out


def load_rank(out, schedule, rank):
    with open(f"{out}.{schedule}.rank{rank}.json") as f:
        return np.load(f"{out}.{schedule}.rank{rank}.npz"), json.load(f)


# Two stages (both schedules) and 2 stages x 2 replicas run the same schedule and executor for a
# Keras model in tests/distribute/test_keras_pipeline.py; the native module here takes three stages.
@pytest.mark.parametrize("stages, replicas, microbatches, schedules", [(3, 1, 4, ("gpipe", "1f1b"))])
def test_launched_stages_train_as_one_process(tmp_path, reference, stages, replicas, microbatches, schedules):
    out = run_launched(tmp_path, stages, replicas, microbatches, schedules)
    for schedule in schedules:
        for rank in range(stages * replicas):  # every rank returns the same History, weights and predictions
            arrays, meta = load_rank(out, schedule, rank)
            assert meta["world_size"] == stages * replicas
            assert meta["cut"] in ([1], [2]) if stages == 2 else meta["cut"] == [1, 2]  # measured by rank 0
            assert_same_history(meta["history"], reference["history"])
            assert_same_weights([arrays[f"weight{i}"] for i in range(4)], reference["weights"])
            np.testing.assert_allclose(meta["evaluate"], reference["evaluate"], atol=1e-5)
            np.testing.assert_allclose(arrays["predictions"], reference["predictions"], atol=1e-5)


def test_balanced_cut_minimises_the_largest_stage():
    assert balanced_cut_points([1, 1, 1, 1], 2) == (2,)
    assert balanced_cut_points([1, 2, 3, 4], 2) == (3,)  # 6 | 4, not 3 | 7
    assert balanced_cut_points([4, 1, 1, 1, 1], 2) == (1,)
    assert balanced_cut_points([1, 1, 1], 3) == (1, 2)


def test_a_native_sequential_without_a_known_input_shape_is_cut_by_parameter_count():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Identity(),
                              torch.nn.Conv1d(1, 64, 3), torch.nn.Conv1d(64, 2, 3))
    split = split_model(net, 2)
    assert split.basis == "balanced by parameter count"
    assert split.cut_points == (3,)  # 256 | 386 params: the larger conv alone
    text = split.describe()
    assert "cut points: [3]" in text and "time share: by parameter count" in text
    assert "0-2 (Flatten, Identity, Conv1d)" in text and "3-3 (Conv1d)" in text


def test_describe_reports_each_stage(plain_start):
    strategy = tf.distribute.PipelineStrategy(stages=2, microbatches=4, cut_points=[2])
    net = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Linear(16, 8), torch.nn.Linear(8, 4))
    lines = strategy.describe(net).splitlines()
    assert lines[0] == ("PipelineStrategy: 2 stages × 1 replica(s) = 2 processes, 4 micro-batches per batch, "
                        "schedule 1f1b")
    assert lines[1] == "cut points: [2] (a stage starts at each layer index), as given"
    stage0 = 12 * 16 + 16 + 16 * 8 + 8
    assert lines[3].split()[0] == "0" and f"{stage0:,}" in lines[3]
    assert lines[4].split()[0] == "1" and f"{8 * 4 + 4:,}" in lines[4]
    assert sum(p.numel() for p in net.parameters()) == stage0 + 36


def test_measured_split_of_an_mlp_is_balanced_by_time():
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Linear(256, 256), torch.nn.Linear(256, 256),
                              torch.nn.Linear(256, 4))
    split = split_model(list(net), 2)
    assert split.basis.startswith("balanced by measured forward+backward time")
    assert all(cost.seconds > 0 for cost in split.costs)
    assert split.cut_points in {(1,), (2,), (3,)}
    assert len(split.stage_ranges()) == 2 and split.stage_ranges()[-1].stop == 4


def test_the_layout_must_fill_the_launched_world(monkeypatch):
    for key, value in {"RANK": "0", "WORLD_SIZE": "3", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=r"stages=2, data_parallel=2\) lays out 2 stages × 2 replicas = 4 processes, "
                                          r"but 3 were launched. Launch 4 .*or use a number of stages that divides 3"):
        tf.distribute.PipelineStrategy(stages=2, microbatches=2, data_parallel=2)
    monkeypatch.setenv("WORLD_SIZE", "6")
    with pytest.raises(ConfigError, match=r"but 6 were launched.* or use data_parallel=3\."):
        tf.distribute.PipelineStrategy(stages=2, microbatches=2)


def test_a_batch_that_does_not_divide_into_micro_batches_is_refused_before_any_process_starts(plain_start):
    x, y = data()
    strategy = tf.distribute.PipelineStrategy(stages=2, microbatches=4, data_parallel=2)
    with pytest.raises(ConfigError, match=r"batch_size=20 does not divide into 2 replica\(s\) × 4 micro-batches "
                                          r"\(8 equal parts\). Use a batch size that is a multiple of 8, e.g. 16 or "
                                          r"24, or microbatches in \[2, 5, 10\]\."):
        strategy.fit(native_network(), dict(x=x, y=y, batch_size=20, verbose=0))


def test_bad_settings_say_what_would_work():
    with pytest.raises(ConfigError, match=r"schedule='1f1b' with 4 stages needs at least 4 micro-batches"):
        PipelineConfig(stages=4, microbatches=2)
    with pytest.raises(ConfigError, match=r"schedule='zb'\): expected '1f1b' or 'gpipe'"):
        PipelineConfig(stages=2, microbatches=2, schedule="zb")
    with pytest.raises(ConfigError, match=r"stages=0\): expected a positive integer"):
        PipelineConfig(stages=0, microbatches=2)
    with pytest.raises(ConfigError, match=r"cut_points=\[3, 2\] does not cut 3 layers into 3 stages: give 2 "
                                          r"increasing layer indices between 1 and 2.*e.g. \[1, 2\]"):
        split_model(native_network(), 3, cut_points=[3, 2])
    with pytest.raises(ConfigError, match=r"stages=4 but the model has 3 layers"):
        split_model(native_network(), 4)
    with pytest.raises(ConfigError, match=r"devices lists 1 devices; 2 stages × 1 replicas need 2"):
        tf.distribute.PipelineStrategy(stages=2, microbatches=2, devices=["cpu:0"])


def test_what_a_pipeline_cannot_do_yet_is_refused_before_any_process_starts(plain_start):
    from hpctrain.engine.callbacks import BackupAndRestore

    x, y = data()
    strategy = tf.distribute.PipelineStrategy(stages=2, microbatches=2)
    with pytest.raises(ConfigError, match=r"on_nonfinite='skip_step' is not supported with PipelineStrategy yet"):
        strategy.fit(native_network(), dict(x=x, y=y, batch_size=16, verbose=0, on_nonfinite="skip_step"))
    with pytest.raises(ConfigError, match=r"checkpoints \(BackupAndRestore, fit\(checkpoint=...\)\) are not supported"):
        strategy.fit(native_network(), dict(x=x, y=y, batch_size=16, verbose=0,
                                            callbacks=[BackupAndRestore("backup")]))
    with pytest.raises(ConfigError, match="weight regularizers are not supported with PipelineStrategy yet"):
        strategy.trainer(native_network(), penalty=lambda: torch.zeros(()), **NATIVE)
    with pytest.raises(ConfigError, match=r"strategy.trainer\(...\) trains the stage of a launched process; start "
                                          r"the script with hpctrain launch --nproc-per-node=2"):
        strategy.trainer(native_network(), **NATIVE)


def test_an_uneven_batch_takes_the_most_micro_batches_that_cut_it_evenly():
    assert [microbatches_for(rows, 4) for rows in (16, 10, 9, 7, 3, 1)] == [4, 2, 3, 1, 3, 1]
