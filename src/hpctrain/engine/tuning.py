"""Measured choices made at the start of ``fit``: the thread count that trains this model fastest.

A few real steps are timed per candidate on the first batches; the weights, the optimizer state
and the RNG are restored afterwards, so the measured steps leave no trace on training.
"""

from __future__ import annotations

import itertools
import time

import torch

WARMUP_STEPS = 2
MEASURED_STEPS = 8
BUDGET_SECONDS_PER_CANDIDATE = 0.25


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


def seconds_per_step(step, batches: list, metrics) -> float:
    """Median time of a step over the given batches (after a warm-up); a host sync per step."""
    for x, y in batches[:WARMUP_STEPS]:
        step(x, y, metrics)
    timings = []
    deadline = time.perf_counter() + BUDGET_SECONDS_PER_CANDIDATE
    for x, y in batches[WARMUP_STEPS:]:
        start = time.perf_counter()
        step(x, y, metrics)
        synchronize(x.device)
        timings.append(time.perf_counter() - start)
        if time.perf_counter() > deadline and len(timings) >= 3:
            break
    timings.sort()
    return timings[len(timings) // 2]


def fastest_thread_count(step, batches: list, metrics, module, optimizer, candidates) -> tuple[int, dict]:
    """Time the step with each thread count; return the fastest and every measurement (s/step)."""
    state = TrainingState(module, optimizer)
    original = torch.get_num_threads()
    measured = {}
    try:
        for threads in candidates:
            torch.set_num_threads(threads)
            measured[threads] = seconds_per_step(step, batches, metrics)
            state.restore()
    finally:
        torch.set_num_threads(original)
        state.restore()
        metrics.reset()
    return min(measured, key=measured.get), measured


def thread_candidates(cores: int) -> list[int]:
    """1, the powers of two below ``cores``, and ``cores``."""
    candidates, threads = [], 1
    while threads < cores:
        candidates.append(threads)
        threads *= 2
    return candidates + [cores]


def trial_batches(data, batch_size: int, *, cycle: bool = False) -> list:
    """The first batches of ``data`` for timing; ``cycle`` goes round a small data set again."""
    count = WARMUP_STEPS + MEASURED_STEPS
    first = list(itertools.islice(data.batches(batch_size), count))
    return list(itertools.islice(itertools.cycle(first), count)) if cycle and first else first


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
