"""Whether local data-parallel processes pay: the decision from (faked) measurements, frozen into the
plan, explained, printed or warned about, cached, and shown by doctor."""

import dataclasses

import numpy as np
import pytest
import torch

import hpctrain as tf
from hpctrain.distribute import replica_count, strategy as strategy_module
from hpctrain.errors import HpctrainWarning
from hpctrain.hardware import dp_decision, make_plan
from hpctrain.hardware.doctor import data_parallel_lines, diagnose, render_text
from hpctrain.hardware.dp_decision import ReplicaTimings, decide_replicas

from fake_machines import SKYLAKE_CPUINFO, cpu, machine

FOUR_CORES = machine(cpu(SKYLAKE_CPUINFO, physical_cores=4, logical=4))

# A step of 1 ms in one process; 2 replicas at 0.6 ms each plus a 2.5 ms all-reduce: 3.1x slower.
SLOWER = ReplicaTimings(replicas=2, batch_size=32, threads=2, one_process_seconds=1e-3, one_process_threads=2,
                        replica_seconds=0.6e-3, allreduce_seconds=2.5e-3, gradient_bytes=101_800,
                        measured_at="2026-12-07 16:00")
# A 40 ms step; 4 replicas at 11 ms each plus a 1 ms all-reduce: 40 / 12 = 3.3x faster.
FASTER = ReplicaTimings(replicas=4, batch_size=256, threads=4, one_process_seconds=40e-3, one_process_threads=4,
                        replica_seconds=11e-3, allreduce_seconds=1e-3, gradient_bytes=7_450_000,
                        measured_at="2026-12-07 16:01")

SLOWER_NUMBERS = ("at batch 32, one process takes 1.00 ms a step on 2 threads; 2 processes would take 3.10 ms "
                  "(each 16 rows on 1 thread: 0.60 ms, plus an all-reduce of 99.4 KiB: 2.50 ms)")
FASTER_NUMBERS = ("at batch 256, one process takes 40.00 ms a step on 4 threads; 4 processes would take 12.00 ms "
                  "(each 64 rows on 1 thread: 11.00 ms, plus an all-reduce of 7.1 MiB: 1.00 ms)")


def _workers(plan) -> str:
    return dict(plan.reasons)["workers"]


# ---- the plan ----------------------------------------------------------------------------------


def test_a_default_request_runs_one_process_where_more_do_not_pay():
    decision = decide_replicas(2, explicit=False, timings=SLOWER)
    plan = make_plan(machine=FOUR_CORES).with_data_parallel(decision)
    assert (decision.replicas, plan.data_parallel) == (1, decision)
    assert _workers(plan) == ("1 (one process, not 2: 2 would be about 3.1x slower than one process; measured: "
                              f"{SLOWER_NUMBERS})")
    assert f"workers: {_workers(plan)}" in plan.explain().splitlines()
    assert decision.notice() == ("hpctrain: data parallel does not pay for this model here, training in one process "
                                 f"instead of 2 (2 would be about 3.1x slower than one process: {SLOWER_NUMBERS})")
    assert decision.warning() is None


def test_a_default_request_runs_n_processes_where_they_pay():
    decision = decide_replicas(4, explicit=False, timings=FASTER)
    plan = make_plan(machine=FOUR_CORES).with_data_parallel(decision)
    assert plan.data_parallel.replicas == 4
    assert _workers(plan) == f"4 (4 processes, about 3.3x faster than one process; measured: {FASTER_NUMBERS})"
    assert decision.notice() is None and decision.warning() is None


def test_an_explicit_request_runs_as_asked_and_names_the_expected_slowdown():
    decision = decide_replicas(2, explicit=True, timings=SLOWER)
    plan = make_plan(machine=FOUR_CORES).with_data_parallel(decision)
    assert decision.replicas == 2
    assert decision.warning() == (
        "2 data-parallel processes were asked for and run as asked, but on this model they are expected about 3.1x "
        f"slower than one process: {SLOWER_NUMBERS}. MirroredStrategy() without devices trains in one process where "
        "more do not pay.")
    assert _workers(plan) == f"2 (asked for explicitly; expected about 3.1x slower than one process; measured: " \
                             f"{SLOWER_NUMBERS})"
    assert decision.notice() is None


def test_within_the_margin_one_process_is_kept():
    near = ReplicaTimings(replicas=2, batch_size=32, threads=2, one_process_seconds=1.05e-3, one_process_threads=1,
                          replica_seconds=0.8e-3, allreduce_seconds=0.2e-3, gradient_bytes=4000)
    assert decide_replicas(2, explicit=False, timings=near).replicas == 1
    assert near.comparison() == "no faster than one process (1.05x, within the 10% margin)"


def test_an_unmeasured_request_keeps_what_was_asked_and_says_why():
    decision = decide_replicas(2, explicit=False, timings=None, unmeasured_because="the inputs are not one array")
    plan = make_plan(machine=FOUR_CORES).with_data_parallel(decision)
    assert _workers(plan) == "2 (the strategy's default; not measured: the inputs are not one array)"


def test_the_measurement_times_the_whole_batch_a_replicas_share_and_the_all_reduce():
    timed, reduced = [], []

    def step_for_rows(rows):
        return lambda: timed.append((rows, torch.get_num_threads()))

    def allreduce(numel, replicas):
        reduced.append((numel, replicas))
        return 2.5e-3

    timings = dp_decision.measure_replica_timings(step_for_rows, batch_size=30, replicas=4, threads=4,
                                                  gradient_numel=1000, allreduce=allreduce)
    # The whole batch on all 4 threads and on a replica's 1 (one process may train on fewer), then
    # ceil(30 / 4) = 8 rows on 1 thread.
    assert sorted(set(timed)) == [(8, 1), (30, 1), (30, 4)]
    assert reduced == [(1000, 4)]
    assert (timings.replicas, timings.batch_size, timings.threads, timings.replica_threads) == (4, 30, 4, 1)
    assert (timings.gradient_bytes, timings.allreduce_seconds) == (4000, 2.5e-3)
    assert timings.one_process_threads in (1, 4)


def test_timings_survive_the_cache():
    key = dp_decision.cache_key({"model": "m"})
    assert dp_decision.cached_timings(key) is None
    dp_decision.store_timings(key, SLOWER, "Sequential (25,450 weights)")
    assert dp_decision.cached_timings(key) == SLOWER
    assert dp_decision.measured_entries() == [("Sequential (25,450 weights)", SLOWER)]


# ---- the strategy ------------------------------------------------------------------------------


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


@pytest.fixture
def measured(monkeypatch):
    """Every measurement returns the timings set in ``result``; ``calls`` counts them."""
    state = {"result": SLOWER, "calls": []}

    def fake(step_for_rows, *, batch_size, replicas, threads, gradient_numel, allreduce=None):
        state["calls"].append((batch_size, replicas, threads, gradient_numel))
        return state["result"]

    monkeypatch.setattr(replica_count.dp_decision, "measure_replica_timings", fake)
    monkeypatch.setattr(strategy_module, "physical_core_count", lambda: 2)
    monkeypatch.setattr(strategy_module, "_default_devices", lambda: [torch.device("cpu")])
    for key in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "SLURM_PROCID", "SLURM_JOB_ID", "OMPI_COMM_WORLD_RANK"):
        monkeypatch.delenv(key, raising=False)
    return state


def test_default_strategy_falls_back_to_one_process_and_says_so_once(measured, capsys):
    strategy = tf.distribute.MirroredStrategy()
    assert (strategy.num_replicas_in_sync, strategy.explicit) == (1, False)  # one, until fit measures
    net, x = _net(), np.zeros((64, 6), "float32")
    decision = strategy.choose_replicas(net, x, 32)
    assert measured["calls"] == [(32, 2, 2, 6 * 8 + 8 + 8 * 3 + 3)]
    assert decision.replicas == 1 and not strategy.spawns_locally
    assert capsys.readouterr().err == decision.notice() + "\n"
    assert f"workers: 1 (one process, not 2: 2 would be about 3.1x slower than one process; measured: " \
           f"{SLOWER_NUMBERS})" in strategy.plan().explain()
    strategy.choose_replicas(net, x, 32)  # the same model and batch: decided already, nothing printed
    assert capsys.readouterr().err == "" and len(measured["calls"]) == 1


def test_default_strategy_spawns_where_more_processes_pay(measured):
    measured["result"] = dataclasses.replace(FASTER, replicas=2)
    strategy = tf.distribute.MirroredStrategy()
    decision = strategy.choose_replicas(_net(), np.zeros((64, 6), "float32"), 256)
    assert decision.replicas == 2
    assert strategy.spawns_locally and strategy.num_replicas_in_sync == 2


def test_explicit_devices_run_as_asked_with_one_warning(measured):
    strategy = tf.distribute.MirroredStrategy(["cpu:0", "cpu:1"])
    net, x = _net(), np.zeros((64, 6), "float32")
    with pytest.warns(HpctrainWarning, match="expected about 3.1x slower than one process") as caught:
        strategy.choose_replicas(net, x, 32)
        strategy.choose_replicas(net, x, 32)
    assert len(caught) == 1
    assert strategy.spawns_locally and strategy.num_replicas_in_sync == 2


def test_a_second_run_reads_the_cached_measurement(measured):
    x = np.zeros((64, 6), "float32")
    tf.distribute.MirroredStrategy().choose_replicas(_net(), x, 32)
    decision = tf.distribute.MirroredStrategy().choose_replicas(_net(), x, 32)
    assert len(measured["calls"]) == 1 and decision.cached
    assert "measured earlier, cached: at batch 32" in decision.reason()


def test_the_real_step_is_timed_without_changing_the_model():
    net = _net()
    before = [p.detach().clone() for p in net.parameters()]
    rng_state, threads = torch.get_rng_state(), torch.get_num_threads()
    decision = replica_count.measured_decision(net, np.ones((64, 6), "float32"), 32,
                                               devices=[torch.device("cpu")] * 2, explicit=True, threads=2)
    assert decision.timings is not None and decision.timings.gradient_bytes == 4 * 83
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(torch.get_rng_state(), rng_state) and torch.get_num_threads() == threads


def test_gpu_replicas_and_odd_inputs_are_not_measured():
    gpus = [torch.device("cuda", 0), torch.device("cuda", 1)]
    decision = replica_count.measured_decision(_net(), np.ones((4, 6)), 32, devices=gpus, explicit=False, threads=2)
    assert (decision.replicas, decision.timings) == (2, None)
    assert decision.unmeasured_because.startswith("each replica has a GPU of its own")
    cpus = [torch.device("cpu")] * 2
    decision = replica_count.measured_decision(_net(), {"a": 1}, 32, devices=cpus, explicit=False, threads=2)
    assert decision.unmeasured_because == "the inputs are not one array or tensor"


def test_a_keras_model_under_the_default_strategy_trains_in_one_process_like_without_it(measured):
    from hpctrain import keras

    def model():
        keras.utils.set_random_seed(0)
        net = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                                keras.layers.Dense(3, activation="softmax")])
        net.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        return net

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 6)).astype("float32"), rng.integers(0, 3, size=64)
    strategy = tf.distribute.MirroredStrategy()
    with strategy.scope():
        inside = model()
    history = inside.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
    alone = model()
    reference = alone.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
    assert history.history["loss"] == reference.history["loss"]
    for a, b in zip(inside.get_weights(), alone.get_weights()):
        np.testing.assert_array_equal(a, b)
    workers = dict(inside._hpctrain_session.trainer.plan.reasons)["workers"]
    assert workers.startswith("1 (one process, not 2: 2 would be about 3.1x slower than one process")


# ---- doctor ------------------------------------------------------------------------------------


def test_doctor_says_how_to_measure_before_anything_is_measured():
    assert diagnose().data_parallel == ()
    assert data_parallel_lines(()) == [
        "not measured yet: the first fit of a model compiled in tf.distribute.MirroredStrategy().scope() measures, "
        "for that model and batch size, whether one process per physical core beats one process "
        "(MirroredStrategy(devices=[...]) measures the count given), and the numbers show here"]


def test_doctor_shows_the_measured_numbers():
    dp_decision.store_timings(dp_decision.cache_key({"model": "a"}), SLOWER, "Sequential (25,450 weights)")
    dp_decision.store_timings(dp_decision.cache_key({"model": "b"}), FASTER, "Sequential (1,863,690 weights)")
    diagnosis = diagnose()
    assert data_parallel_lines(diagnosis.data_parallel) == [
        "Sequential (1,863,690 weights): 4 processes (4 would be about 3.3x faster than one process; measured "
        f"2026-12-07 16:01): {FASTER_NUMBERS}",
        "Sequential (25,450 weights): one process (2 would be about 3.1x slower than one process; measured "
        f"2026-12-07 16:00): {SLOWER_NUMBERS}",
    ]
    assert "\nData parallel\n  Sequential (1,863,690 weights): 4 processes" in render_text(diagnosis)
