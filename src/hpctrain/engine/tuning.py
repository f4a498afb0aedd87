"""Measured choices: the thread count that trains this model fastest.

At the start of ``fit``, a few real steps are timed per candidate on the first batches; the
weights, the optimizer state and the RNG are restored afterwards, so the measured steps leave no
trace on training. While training, :class:`ThreadRetuner` times the steps themselves and moves
to another count when that one has become faster.
"""

from __future__ import annotations

import math
import time

import torch

WARMUP_STEPS = 2
MEASURED_STEPS = 8
# Eight seed-MLP steps take ~1 ms, within the noise of one interrupt: the measured batches are
# taken again until this much time has passed (each pass gathers them again, as an epoch does).
MIN_MEASURED_SECONDS = 0.02
BUDGET_SECONDS_PER_CANDIDATE = 0.25
THREAD_ROUNDS = 2
# Fewer threads than cores must be this much faster to be chosen: the choice is cached, and on a
# shared machine a phase of contention for the second core can make one thread look faster
# for a moment (seed MLP: 1 thread measured 10-20% faster in such phases, 15% slower in full
# epochs otherwise).
FEWER_THREADS_MARGIN = 0.10


class TrainingState:
    """A copy of everything a training step changes, restorable in place."""

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        # Parameters and buffers (BatchNorm statistics move in training mode too).
        self.params = [(t, t.detach().clone()) for t in [*module.parameters(), *module.buffers()]]
        self.optimizer_state = {
            param: {key: value.clone() if isinstance(value, torch.Tensor) else value for key, value in state.items()}
            for param, state in optimizer.state.items()
        }
        self.rng = torch.get_rng_state()
        on_gpu = any(p.is_cuda for p in module.parameters())
        self.cuda_rng = torch.cuda.get_rng_state_all() if on_gpu else None

    @torch.no_grad()
    def restore(self) -> None:
        for param, saved in self.params:
            param.copy_(saved)
        for param in list(self.optimizer.state):
            if param not in self.optimizer_state:
                del self.optimizer.state[param]  # created by the measured steps
        for param, saved in self.optimizer_state.items():
            live = self.optimizer.state[param]
            for key, value in saved.items():
                # In place: a fused update may hold references to these very tensors.
                if isinstance(value, torch.Tensor) and isinstance(live.get(key), torch.Tensor):
                    live[key].copy_(value)
                else:
                    live[key] = value
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


def seconds_per_step(step, batches, metrics) -> float:
    """Mean time per step after a warm-up, each batch's gather included as an epoch pays it.

    Timed as one run of consecutive steps, not step by step: a per-step timer would leave out the
    gather of the next batch, which for large batches of scattered rows costs a third of a step.
    """
    for x, y in batches[:WARMUP_STEPS]:
        step(x, y, metrics)
    measured = batches[WARMUP_STEPS:]
    done, device = 0, None
    start = time.perf_counter()
    while len(measured):
        for x, y in measured:
            step(x, y, metrics)
            done, device = done + 1, x.device
            if done >= 3 and time.perf_counter() - start > BUDGET_SECONDS_PER_CANDIDATE:
                break
        if time.perf_counter() - start > MIN_MEASURED_SECONDS:
            break
    if device is not None:
        synchronize(device)  # a host sync, once per measurement
    return (time.perf_counter() - start) / max(done, 1)


def fastest_thread_count(step, batches: list, metrics, module, optimizer, candidates) -> tuple[int, dict]:
    """Time the step with each thread count; return the fastest (preferring more threads, see
    ``FEWER_THREADS_MARGIN``) and every measurement (s/step).

    The counts take turns for ``THREAD_ROUNDS`` rounds and each keeps its best round: a burst of
    other work on the cores during one count's only turn would otherwise decide the choice, and
    the choice is cached for later runs (a second thread waiting at every barrier for a core
    that another process holds measured several times slower than one thread).
    """
    state = TrainingState(module, optimizer)
    original = torch.get_num_threads()
    measured = {}
    try:
        for _ in range(THREAD_ROUNDS):
            for threads in candidates:
                torch.set_num_threads(threads)
                seconds = seconds_per_step(step, batches, metrics)
                measured[threads] = min(seconds, measured.get(threads, math.inf))
                state.restore()
    finally:
        torch.set_num_threads(original)
        state.restore()
        metrics.reset()
    return _preferring_more_threads(measured), measured


def _preferring_more_threads(measured: dict[int, float]) -> int:
    """The most threads unless fewer are faster by more than ``FEWER_THREADS_MARGIN``."""
    most = max(measured)
    fastest = min(measured, key=measured.get)
    return fastest if measured[fastest] < measured[most] * (1.0 - FEWER_THREADS_MARGIN) else most


def thread_candidates(cores: int) -> list[int]:
    """1, the powers of two below ``cores``, and ``cores``."""
    candidates, threads = [], 1
    while threads < cores:
        candidates.append(threads)
        threads *= 2
    return candidates + [cores]


# While training: a comparison times PROBE_SECONDS (and at least PROBE_STEPS steps) on the current
# count, then as long on another; a count at least SWITCH_MARGIN faster takes over. Comparisons
# start RETUNE_EVERY_SECONDS apart; each one the other count loses doubles the wait, up to
# MAX_RETUNE_SECONDS (at once if it lost by CLEAR_LOSS); probes never take more than
# PROBE_SHARE_LIMIT of the time (slow steps).
RETUNE_EVERY_SECONDS = 2.0
MAX_RETUNE_SECONDS = 8.0
PROBE_SECONDS = 0.05
PROBE_STEPS = 3
PROBE_SHARE_LIMIT = 0.025
SWITCH_MARGIN = 0.10
CLEAR_LOSS = 1.5  # a probe this many times slower than the current count waits MAX_RETUNE_SECONDS
IDLE_CLOCK_EVERY_STEPS = 8  # between comparisons the clock is read every few steps, not after each
SETTLING_STEPS = 64  # the first steps of a fit (fresh buffers, cold caches) are not timed


class ThreadRetuner:
    """Keeps the fastest thread count while training, on a machine whose fastest count changes.

    Where the cores are shared (a VM's virtual CPUs, a busy node), the second core comes and goes
    with the neighbours' load, and with it the best count: the seed MLP took ~70 us/step on two
    threads while the second core was free and 130-750 us/step while other work held it, against
    ~95 on one thread throughout (``benchmarks/results/thread_retune.json``). A choice measured
    once at the start is right for one of those phases only.

    A comparison times a stretch of steps on the current count, then an equal stretch on a
    neighbouring candidate (alternately the next fewer and the next more threads); the candidate
    stays only if it was more than ``SWITCH_MARGIN`` faster. The steps run as they would anyway:
    nothing is repeated or restored; a losing probe costs its stretch run slower. ``after_step`` is
    called once per step; on a CPU no host sync is involved.
    """

    def __init__(self, candidates, current: int, *, on_switch=None, clock=time.perf_counter,
                 set_threads=torch.set_num_threads):
        self.candidates = sorted(set(candidates))
        self.current = current
        self.on_switch = on_switch  # called with (threads, {count: seconds per step}) on a change
        self.clock, self.set_threads = clock, set_threads
        self._turn = 0  # which neighbour the next comparison tries
        self._wait = RETUNE_EVERY_SECONDS
        self._start_idle(clock())

    def follow(self, threads: int) -> None:
        """A new fit starts on ``threads``; its first ``SETTLING_STEPS`` steps are not timed. The
        wait runs on across fits, so that a model trained by many short fits is compared too."""
        self.interrupt()
        self.current = threads
        self._countdown = max(self._countdown, SETTLING_STEPS)

    def interrupt(self) -> None:
        """Drops a comparison in progress, back on the current count: the steps stop for a while
        (an epoch's end, validation, callbacks), which must not count as a step's time. A comparison
        that was due stays due, so epochs shorter than the wait still get one."""
        if self._phase == "idle":
            return
        if self._probing is not None:
            self.set_threads(self.current)
        next_comparison = self._next_comparison
        self._start_idle(self.clock())
        self._next_comparison = next_comparison

    def after_step(self, steps: int = 1) -> None:
        """Called after each step, or after each run of ``steps`` steps."""
        self._countdown -= steps
        if self._countdown <= 0:
            self._advance(steps)

    def _start_idle(self, now: float) -> None:
        self._phase, self._probing, self._baseline = "idle", None, None
        self._next_comparison = now + self._wait
        self._countdown = IDLE_CLOCK_EVERY_STEPS

    def _start_timing(self, phase: str, now: float) -> None:
        self._phase, self._timed_from, self._timed_steps = phase, now, 0

    def _advance(self, steps: int) -> None:
        now = self.clock()
        if self._phase == "idle":
            self._countdown = IDLE_CLOCK_EVERY_STEPS
            if now >= self._next_comparison:
                self._start_timing("baseline", now)
                self._countdown = 1
            return
        self._countdown = 1  # timing: the clock after every step
        self._timed_steps += steps
        if now - self._timed_from < PROBE_SECONDS or self._timed_steps < PROBE_STEPS:
            return
        per_step = (now - self._timed_from) / self._timed_steps
        if self._phase == "baseline":
            self._baseline, self._probing = per_step, self._neighbour()
            if self._probing is None:
                self._start_idle(now)
                return
            self.set_threads(self._probing)
            self._start_timing("probe", self.clock())  # after the switch: its cost is not the candidate's
            return
        self._decide(per_step, now)

    def _decide(self, probe_per_step: float, now: float) -> None:
        probed, baseline = self._probing, self._baseline
        probe_seconds = now - self._timed_from
        if probe_per_step < baseline * (1.0 - SWITCH_MARGIN):
            previous, self.current = self.current, probed
            self._wait = RETUNE_EVERY_SECONDS
            if self.on_switch is not None:
                self.on_switch(probed, {previous: baseline, probed: probe_per_step})
        else:
            self.set_threads(self.current)
            # A count far slower will not overtake soon: wait the longest at once.
            clear_loss = probe_per_step > baseline * CLEAR_LOSS
            self._wait = MAX_RETUNE_SECONDS if clear_loss else min(2 * self._wait, MAX_RETUNE_SECONDS)
        self._wait = max(self._wait, probe_seconds / PROBE_SHARE_LIMIT)  # slow steps: rarer probes
        self._start_idle(now)

    def _neighbour(self) -> int | None:
        index = self.candidates.index(self.current) if self.current in self.candidates else None
        if index is None:
            return None
        below = self.candidates[index - 1] if index > 0 else None
        above = self.candidates[index + 1] if index + 1 < len(self.candidates) else None
        self._turn ^= 1
        first, second = (below, above) if self._turn else (above, below)
        return first if first is not None else second


class TrialBatches:
    """Batches of rows drawn at random from the whole data set, gathered when iterated.

    Timing them includes the gather of scattered rows that every shuffled epoch pays; batches of
    the first rows, gathered beforehand, would flatter large batches, whose rows then come from
    cache instead of memory.
    """

    def __init__(self, data, indices: list[torch.Tensor]):
        self.data = data
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, part: slice) -> "TrialBatches":
        return TrialBatches(self.data, self.indices[part])

    def __iter__(self):
        for index in self.indices:
            yield self.data.x.index_select(0, index), self.data.y.index_select(0, index)


def trial_batches(data, batch_size: int, *, cycle: bool = False) -> TrialBatches:
    """Up to ``WARMUP_STEPS + MEASURED_STEPS`` batches of ``data`` (as many as an epoch has, or,
    with ``cycle``, that many from a small data set by drawing its rows again)."""
    count = WARMUP_STEPS + MEASURED_STEPS
    if not cycle:
        count = min(count, len(data) // batch_size)
    # Its own generator: the trials must not move the RNG that training draws from.
    generator = torch.Generator(device=data.x.device).manual_seed(0)
    batch_size = min(batch_size, len(data))
    indices = [torch.randperm(len(data), generator=generator, device=data.x.device)[:batch_size] for _ in range(count)]
    return TrialBatches(data, indices)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
