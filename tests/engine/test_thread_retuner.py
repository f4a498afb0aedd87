"""The thread count re-measured while training: a count more than 10% faster takes over, a count
that is not stays a probe, and an interrupted comparison leaves the current count in place."""

import pytest

from hpctrain.engine import Trainer, tuning
from hpctrain.engine.checkpoint import CheckpointConfig
from hpctrain.engine.tuning import ThreadRetuner
from hpctrain.hardware import make_plan

from fake_machines import SKYLAKE_CPUINFO, cpu, machine

TWO_CORES = machine(cpu(SKYLAKE_CPUINFO, physical_cores=2, logical=2))


class SimulatedCores:
    """Steps whose duration depends on the thread count, on a clock the retuner reads."""

    def __init__(self, seconds_per_step: dict[int, float], threads: int):
        self.seconds_per_step = seconds_per_step
        self.threads = threads
        self.now = 0.0
        self.settings = []
        self.timeline = []
        self.switches = []

    def clock(self) -> float:
        return self.now

    def set_threads(self, threads: int) -> None:
        self.threads = threads
        self.settings.append(threads)
        self.timeline.append((self.now, threads))

    def retuner(self, candidates=(1, 2)) -> ThreadRetuner:
        return ThreadRetuner(candidates, self.threads, clock=self.clock, set_threads=self.set_threads,
                             on_switch=lambda threads, measured: self.switches.append((threads, measured)))

    def train(self, retuner: ThreadRetuner, seconds: float, steps_per_call: int = 1) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now += self.seconds_per_step[self.threads] * steps_per_call
            retuner.after_step(steps_per_call)


def test_keeps_the_count_while_the_other_is_slower_probing_it_less_and_less_often():
    cores = SimulatedCores({1: 98e-6, 2: 73e-6}, threads=2)
    retuner = cores.retuner()
    cores.train(retuner, 60.0)
    assert cores.switches == []
    assert retuner.current == 2 and cores.threads == 2
    probes = [when for when, threads in cores.timeline if threads == 1]
    assert cores.settings == [1, 2] * len(probes)  # each probe ends back on two threads
    gaps = [later - earlier for earlier, later in zip(probes, probes[1:])]
    # The wait doubles after each losing probe, up to MAX_RETUNE_SECONDS (plus the comparison itself).
    assert [round(gap) for gap in gaps] == [4, 8, 8, 8, 8, 8, 8]
    assert probes[0] == pytest.approx(tuning.RETUNE_EVERY_SECONDS + tuning.PROBE_SECONDS, abs=0.01)


def test_runs_of_steps_reported_at_once_are_timed_per_step():
    """The C++ step loop reports a run of 16 steps per call: the comparison still finds the
    count that is faster per step."""
    cores = SimulatedCores({1: 70e-6, 2: 110e-6}, threads=2)
    retuner = cores.retuner()
    cores.train(retuner, 5.0, steps_per_call=16)
    assert [threads for threads, _ in cores.switches] == [1]
    measured = cores.switches[0][1]
    assert measured[2] == pytest.approx(110e-6) and measured[1] == pytest.approx(70e-6)


def test_moves_to_the_faster_count_and_back_when_the_machine_changes():
    cores = SimulatedCores({1: 98e-6, 2: 110e-6}, threads=2)  # the second core is busy elsewhere
    retuner = cores.retuner()
    cores.train(retuner, 3.0)
    assert retuner.current == 1 and cores.threads == 1
    (threads, measured), = cores.switches
    assert threads == 1
    assert measured[2] == pytest.approx(110e-6, rel=0.01) and measured[1] == pytest.approx(98e-6, rel=0.01)

    cores.seconds_per_step = {1: 98e-6, 2: 73e-6}  # the second core is free again
    cores.train(retuner, 3.0)
    assert retuner.current == 2 and cores.threads == 2
    assert [threads for threads, _ in cores.switches] == [1, 2]


def test_a_count_far_slower_is_probed_again_only_after_the_longest_wait():
    cores = SimulatedCores({1: 200e-6, 2: 100e-6}, threads=2)  # one thread at half the speed
    retuner = cores.retuner()
    cores.train(retuner, 30.0)
    probes = [when for when, threads in cores.timeline if threads == 1]
    gaps = [later - earlier for earlier, later in zip(probes, probes[1:])]
    assert [round(gap) for gap in gaps] == [8, 8, 8] and cores.switches == []


def test_slow_steps_are_compared_over_several_steps_and_probed_rarely():
    # 15 ms steps on one thread: a probe lasts PROBE_STEPS steps, and probes take at most
    # PROBE_SHARE_LIMIT of the time.
    cores = SimulatedCores({1: 15e-3, 2: 12.5e-3}, threads=2)
    retuner = cores.retuner()
    cores.train(retuner, 120.0)
    probes = [when for when, threads in cores.timeline if threads == 1]
    assert cores.switches == [] and len(probes) >= 2
    probe_time = len(probes) * tuning.PROBE_STEPS * 15e-3
    assert probe_time / 120.0 <= tuning.PROBE_SHARE_LIMIT


def test_a_count_faster_by_less_than_the_margin_does_not_take_over():
    cores = SimulatedCores({1: 95e-6, 2: 100e-6}, threads=2)  # one thread 5% faster
    retuner = cores.retuner()
    cores.train(retuner, 10.0)
    assert cores.switches == [] and cores.threads == 2


def test_an_interrupted_probe_returns_to_the_current_count_and_the_comparison_stays_due():
    cores = SimulatedCores({1: 50e-6, 2: 100e-6}, threads=2)
    retuner = cores.retuner()
    cores.train(retuner, tuning.RETUNE_EVERY_SECONDS + tuning.PROBE_SECONDS * 1.5)  # into the probe
    assert cores.threads == 1 and cores.switches == []
    retuner.interrupt()
    assert cores.threads == 2 and retuner.current == 2
    cores.train(retuner, 2 * tuning.PROBE_SECONDS + 0.01)  # due at once: no new wait of a period
    assert retuner.current == 1 and [threads for threads, _ in cores.switches] == [1]


def test_more_candidates_are_probed_one_neighbour_at_a_time():
    cores = SimulatedCores({1: 400e-6, 2: 200e-6, 4: 100e-6, 8: 120e-6}, threads=4)
    retuner = cores.retuner(candidates=(1, 2, 4, 8))
    cores.train(retuner, 20.0)
    assert cores.switches == [] and set(cores.settings) == {2, 4, 8}


def _small_fit(trainer, rng, **fit_args):
    x = rng.normal(size=(256, 8)).astype("float32")
    y = rng.integers(0, 3, size=256)
    trainer.fit(x, y, batch_size=32, epochs=1, verbose=0, **fit_args)


def _trainer(plan):
    import torch

    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    return Trainer(module, loss=torch.nn.CrossEntropyLoss(), optimizer="adam", plan=plan)


def test_fit_retunes_only_a_thread_count_it_chose_and_not_under_checkpoints(rng, tmp_path):
    chosen = _trainer(make_plan(machine=TWO_CORES))
    _small_fit(chosen, rng)
    assert isinstance(chosen._retuner, ThreadRetuner) and chosen._retuner.candidates == [1, 2]

    given = _trainer(make_plan(machine=TWO_CORES, threads=2))
    _small_fit(given, rng)
    assert given._retuner is None

    checkpointed = _trainer(make_plan(machine=TWO_CORES))
    _small_fit(checkpointed, rng, checkpoint=CheckpointConfig(directory=str(tmp_path / "run"), save_freq="epoch"))
    assert checkpointed._retuner is None


def test_short_fits_are_compared_too_the_period_running_on_across_them():
    cores = SimulatedCores({1: 98e-6, 2: 110e-6}, threads=2)
    retuner = cores.retuner()
    for _ in range(20):  # fits of 0.3 s, each starting on the count its plan holds
        retuner.follow(cores.threads)
        cores.train(retuner, 0.3)
        retuner.interrupt()
    assert retuner.current == 1 and cores.threads == 1
