"""Batch-size searches: the largest batch that fits a device's memory, and the fastest on a CPU.

Both take the trial as a function, so they are tested without the hardware: ``fits(b)`` runs a
real step of ``b`` rows (or a simulated allocator) and says whether it ran out of memory.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from hpctrain.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class BatchSearch:
    batch_size: int
    trials: tuple[tuple[int, bool], ...]  # (batch size, fitted) in the order tried

    def describe(self) -> str:
        return ", ".join(f"{size} {'fits' if fitted else 'out of memory'}" for size, fitted in self.trials)


def largest_fitting_batch(fits: Callable[[int], bool], *, start: int, limit: int) -> BatchSearch:
    """Double from ``start`` while it fits, then bisect between the last fit and the first failure.

    Never returns a size that failed; never more than ``limit`` (the data set's size).
    """
    trials: list[tuple[int, bool]] = []

    def trial(size: int) -> bool:
        fitted = bool(fits(size))
        trials.append((size, fitted))
        return fitted

    size = min(start, limit)
    if not trial(size):
        raise ConfigError(f"even a batch of {size} rows does not fit in the device's memory; use a smaller "
                          "model, a smaller explicit batch_size, or a device with more memory.")
    good, bad = size, None
    while bad is None and good < limit:
        candidate = min(good * 2, limit)
        if trial(candidate):
            good = candidate
        else:
            bad = candidate
    while bad is not None and bad - good > 1:
        middle = (good + bad) // 2
        if trial(middle):
            good = middle
        else:
            bad = middle
    return BatchSearch(good, tuple(trials))


def with_headroom(size: int, fraction: float = 0.9, multiple: int = 8) -> int:
    """A little below the largest fitting size, so that fragmentation and evaluation still fit."""
    return max(1, int(size * fraction) // multiple * multiple or min(size, multiple))


def cpu_batch_candidates(limit: int, start: int = 32, most: int = 1024) -> list[int]:
    sizes, size = [], start
    while size <= min(limit, most):
        sizes.append(size)
        size *= 2
    return sizes or [limit]


def fits_in_memory(run_step: Callable[[], None], out_of_memory: type[BaseException] | None = None) -> bool:
    """Runs one real step; False where the device ran out of memory (any other error propagates)."""
    import torch

    try:
        run_step()
    except (out_of_memory or torch.cuda.OutOfMemoryError):
        return False
    return True


# The batch size a learning rate is assumed tuned for: Keras's default.
REFERENCE_BATCH = 32


def rescaled_learning_rate(learning_rate: float, batch_size: int, rule: str,
                           reference: int = REFERENCE_BATCH) -> tuple[float, str]:
    """The learning rate for ``batch_size`` by the linear (Goyal et al.) or square-root rule."""
    ratio = batch_size / reference
    factor = ratio if rule == "linear" else math.sqrt(ratio)
    formula = f"{batch_size}/{reference}" if rule == "linear" else f"sqrt({batch_size}/{reference})"
    return learning_rate * factor, f"{learning_rate:g} × {formula} by the {rule} rule for the chosen batch size"
