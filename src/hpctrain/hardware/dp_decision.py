"""Whether several local data-parallel processes train faster than one, measured on the model.

Data parallelism on one machine splits every global batch of B rows across N processes. Each
process then runs a step on B/N rows with its share of the cores, applies the full optimizer
update, and all of them sum their gradients (an all-reduce of the model's gradient size). It
pays only where that is shorter than one process's step on all B rows with all the cores; for a
small model at a small batch the all-reduce alone is often longer than the whole step.

So three numbers decide it, measured once per model, batch size and machine (then cached with
the other plan measurements): one process's step, one replica's step, and the all-reduce.
The caller supplies the step to time (this layer knows no models); the all-reduce is gloo's own,
between N threads of this process over the same loopback transport the replicas use.

A request is *explicit* when the user named the replicas (``MirroredStrategy(devices=[...])``):
it is honoured, with a warning naming the expected slowdown where it does not pay. The default
``MirroredStrategy()`` is not: it runs N processes only where the measurement says they pay.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import statistics
import threading
import time
from collections.abc import Callable

import torch

from hpctrain.hardware import plan_cache

# N processes must be predicted this much faster than one to be chosen: a few timed steps vary
# by several percent, and a spawned group costs its start-up on top.
SPEED_MARGIN = 0.10
# Timing stops after this many seconds per measurement (once it has MIN_SAMPLES), so a large
# model costs a few of its own steps, not a fixed count (as the thread trials: engine.tuning).
TIME_LIMIT_SECONDS = 0.25
MIN_SAMPLES, MAX_SAMPLES, WARMUP = 3, 15, 2
_GLOO_TIMEOUT = datetime.timedelta(seconds=60)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReplicaTimings:
    """One measurement: a step of one process against a step of N replicas, in seconds."""

    replicas: int
    batch_size: int
    threads: int  # the cores one process may use; each replica has threads // replicas (at least 1)
    one_process_seconds: float  # a step on the whole batch, at the faster of all or a replica's threads
    one_process_threads: int
    replica_seconds: float  # a replica's step: its share of the rows on its share of the threads
    allreduce_seconds: float  # summing the gradient across the replicas
    gradient_bytes: int
    measured_at: str = ""

    @property
    def replica_threads(self) -> int:
        return max(1, self.threads // self.replicas)

    @property
    def replica_rows(self) -> int:
        return math.ceil(self.batch_size / self.replicas)

    @property
    def parallel_seconds(self) -> float:
        return self.replica_seconds + self.allreduce_seconds

    @property
    def speedup(self) -> float:
        """How many times faster N processes are expected than one (below 1: slower)."""
        return self.one_process_seconds / self.parallel_seconds

    @property
    def pays(self) -> bool:
        return self.speedup >= 1 + SPEED_MARGIN

    def describe(self) -> str:
        """The numbers, in words: what ``explain``, the notice and ``doctor`` show."""
        return (f"at batch {self.batch_size}, one process takes {_ms(self.one_process_seconds)} a step on "
                f"{self.one_process_threads} {_plural(self.one_process_threads, 'thread')}; {self.replicas} "
                f"processes would take "
                f"{_ms(self.parallel_seconds)} (each {self.replica_rows} rows on {self.replica_threads} "
                f"{_plural(self.replica_threads, 'thread')}: {_ms(self.replica_seconds)}, plus an all-reduce of "
                f"{_kib(self.gradient_bytes)}: {_ms(self.allreduce_seconds)})")

    def comparison(self) -> str:
        if self.pays:
            return f"about {self.speedup:.1f}x faster than one process"
        if self.speedup < 1:
            return f"about {1 / self.speedup:.1f}x slower than one process"
        return f"no faster than one process ({self.speedup:.2f}x, within the {SPEED_MARGIN:.0%} margin)"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ReplicaTimings":
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReplicaDecision:
    """How many local processes train, and why: frozen into the plan (``Plan.data_parallel``)."""

    requested: int  # the replicas asked for (explicitly) or considered (by default)
    replicas: int  # the processes that train
    explicit: bool
    timings: ReplicaTimings | None = None
    unmeasured_because: str = ""
    cached: bool = False

    def reason(self) -> str:
        """The plan's ``workers`` line (after the count)."""
        if self.timings is None:
            asked = "asked for explicitly" if self.explicit else "the strategy's default"
            return f"{asked}; not measured: {self.unmeasured_because}"
        measured = f"measured{' earlier, cached' if self.cached else ''}: {self.timings.describe()}"
        if self.replicas == 1:
            return (f"one process, not {self.requested}: {self.requested} would be "
                    f"{self.timings.comparison()}; {measured}")
        if self.explicit and not self.timings.pays:
            return f"asked for explicitly; expected {self.timings.comparison()}; {measured}"
        return f"{self.replicas} processes, {self.timings.comparison()}; {measured}"

    def notice(self) -> str | None:
        """The line printed when the default strategy falls back to one process."""
        if self.timings is None or self.explicit or self.replicas != 1:
            return None
        return (f"hpctrain: data parallel does not pay for this model here, training in one process instead of "
                f"{self.requested} ({self.requested} would be {self.timings.comparison()}: "
                f"{self.timings.describe()})")

    def warning(self) -> str | None:
        """The warning for an explicit request that is expected to be slower than one process."""
        if self.timings is None or not self.explicit or self.timings.pays:
            return None
        return (f"{self.requested} data-parallel processes were asked for and run as asked, but on this model they "
                f"are expected {self.timings.comparison()}: {self.timings.describe()}. MirroredStrategy() without devices trains "
                "in one process where more do not pay.")


def decide_replicas(requested: int, *, explicit: bool, timings: ReplicaTimings | None,
                    unmeasured_because: str = "", cached: bool = False) -> ReplicaDecision:
    """An explicit request always runs as asked; otherwise N processes only where they pay."""
    if timings is None or explicit or timings.pays:
        replicas = requested
    else:
        replicas = 1
    return ReplicaDecision(requested=requested, replicas=replicas, explicit=explicit, timings=timings,
                           unmeasured_because=unmeasured_because, cached=cached)


# ------------------------------------------------------------------------------- measurement


def measure_replica_timings(step_for_rows: Callable[[int], Callable[[], None]], *, batch_size: int, replicas: int,
                            threads: int, gradient_numel: int,
                            allreduce: Callable[[int, int], float] | None = None) -> ReplicaTimings:
    """Times ``step_for_rows(batch_size)`` on ``threads`` threads and on a replica's share of them
    (one process would train at the faster: fit measures fewer threads too), ``step_for_rows(rows
    per replica)`` on a replica's share, then the all-reduce of ``gradient_numel`` floats."""
    rows, share_threads = math.ceil(batch_size / replicas), max(1, threads // replicas)
    whole = step_for_rows(batch_size)
    one, one_threads = min((seconds_per_call(whole, threads=count), count) for count in {threads, share_threads})
    share = seconds_per_call(step_for_rows(rows), threads=share_threads)
    summed = (allreduce or allreduce_seconds)(gradient_numel, replicas)
    return ReplicaTimings(replicas=replicas, batch_size=batch_size, threads=threads, one_process_seconds=one,
                          one_process_threads=one_threads, replica_seconds=share, allreduce_seconds=summed, gradient_bytes=4 * gradient_numel,
                          measured_at=time.strftime("%Y-%m-%d %H:%M"))


def seconds_per_call(call: Callable[[], None], *, threads: int | None, clock=time.perf_counter) -> float:
    """The median of a few timed calls on ``threads`` intra-op threads (the caller's count restored;
    None: left as it is, for calls from several threads at once, since the count is per process)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for _ in range(WARMUP):
            call()
        samples: list[float] = []
        started = clock()
        while len(samples) < MAX_SAMPLES and (len(samples) < MIN_SAMPLES or clock() - started < TIME_LIMIT_SECONDS):
            begin = clock()
            call()
            samples.append(clock() - begin)
        return statistics.median(samples)
    finally:
        if threads is not None:
            torch.set_num_threads(previous)


def allreduce_seconds(numel: int, replicas: int) -> float:
    """gloo's all-reduce of ``numel`` float32 among ``replicas`` threads of this process: the same
    algorithm and loopback transport as between spawned replicas, without starting processes."""
    store = torch.distributed.HashStore()
    results: list[float | BaseException] = [0.0] * replicas

    def member(rank: int) -> None:
        try:
            group = torch.distributed.ProcessGroupGloo(torch.distributed.PrefixStore("dp-decision", store), rank,
                                                       replicas, _GLOO_TIMEOUT)
            tensor = torch.ones(max(1, numel))
            results[rank] = seconds_per_call(lambda: group.allreduce([tensor]).wait(), threads=None)
        except BaseException as error:  # reported by the caller's thread
            results[rank] = error

    members = [threading.Thread(target=member, args=(rank,), name=f"hpctrain-allreduce-{rank}")
               for rank in range(replicas)]
    for thread in members:
        thread.start()
    for thread in members:
        thread.join()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return max(results)  # the step waits for the slowest member


# ------------------------------------------------------------------------------------- cache


def cache_key(description: dict) -> str:
    return plan_cache.key_of({"kind": "data_parallel", **description})


def cached_timings(key: str) -> ReplicaTimings | None:
    entry = plan_cache.load(key)
    if not entry or "data_parallel" not in entry:
        return None
    try:
        return ReplicaTimings.from_dict(entry["data_parallel"])
    except TypeError:  # written by another version with other fields: measure again
        return None


def store_timings(key: str, timings: ReplicaTimings, model: str) -> None:
    plan_cache.store(key, {"data_parallel": timings.as_dict(), "model": model})


def measured_entries() -> list[tuple[str, ReplicaTimings]]:
    """Every cached data-parallel measurement as (model, timings), the latest first (for doctor)."""
    found = []
    for entry in plan_cache.entries():
        if isinstance(entry.get("data_parallel"), dict):
            try:
                found.append((str(entry.get("model", "a model")), ReplicaTimings.from_dict(entry["data_parallel"])))
            except TypeError:
                continue
    return sorted(found, key=lambda item: item[1].measured_at, reverse=True)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def _kib(size: int) -> str:
    return f"{size / 1024:.1f} KiB" if size < 1024**2 else f"{size / 1024**2:.1f} MiB"


def _plural(count: int, word: str) -> str:
    return word if count == 1 else word + "s"
