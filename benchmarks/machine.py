"""What the parent records about the machine, and how busy it is around each run.

The benchmark machine can be shared (other containers on the same kernel,
invisible to `ps`, or a busy hypervisor). On 2 cores a single competing
process can stretch an epoch several times over, so the harness measures how
much CPU time others used while each child ran, and can wait for a quiet
machine before spawning the next one. /proc/stat is kernel-wide, so it sees
processes of every container.
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from common import physical_core_count

# Environment variables that change how the numeric libraries run; recorded with the results.
THREADING_ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "TF_ENABLE_ONEDNN_OPTS",
)

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
# /proc/stat "cpu" columns: user nice system idle iowait irq softirq steal (guest
# time is already inside user/nice, so later columns are not read).
IDLE_COLUMNS = (3, 4)
STEAL_COLUMN = 7
COUNTED_COLUMNS = 8


# ---------------------------------------------------------------- description


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_total_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def run_probe(python: str, code: str) -> str | None:
    """Runs a one-liner in another interpreter; None if it is missing or the code fails."""
    if not Path(python).exists():
        return None
    completed = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if completed.returncode != 0:
        return None
    return completed.stdout.strip() or None


def package_version(python: str, distribution: str) -> str | None:
    """An installed distribution's version, read without importing it (importing TF is slow)."""
    return run_probe(python, f"import importlib.metadata as m; print(m.version({distribution!r}))")


def python_version(python: str) -> str | None:
    return run_probe(python, "import platform; print(platform.python_version())")


def git_commit(repo_dir: Path) -> str | None:
    completed = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True
    )
    return completed.stdout.strip() if completed.returncode == 0 else None


def machine_info(project_python: str, tf_python: str, repo_dir: Path) -> dict:
    return {
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "physical_cores": physical_core_count(),
        "memory_gib": memory_total_gib(),
        "platform": platform.platform(),
        "python": python_version(project_python),
        "tf_python": python_version(tf_python),
        "torch_version": package_version(project_python, "torch"),
        "numpy_version": package_version(project_python, "numpy"),
        "hpctrain_version": package_version(project_python, "hpctrain"),
        "tensorflow_version": package_version(tf_python, "tensorflow"),
        "keras_version": package_version(tf_python, "keras"),
        "threading_env": {name: os.environ.get(name) for name in THREADING_ENV_VARS},
        "git_commit": git_commit(repo_dir),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------- load


def read_cpu_ticks() -> list[int]:
    with open("/proc/stat", encoding="ascii") as stat:
        fields = stat.readline().split()
    ticks = [int(value) for value in fields[1 : 1 + COUNTED_COLUMNS]]
    return ticks + [0] * (COUNTED_COLUMNS - len(ticks))


@dataclass(frozen=True)
class CpuSnapshot:
    busy_s: float  # all CPUs, all processes, steal excluded
    steal_s: float  # time the hypervisor gave our vCPUs to someone else
    children_cpu_s: float  # CPU time of this process's finished children

    @classmethod
    def take(cls) -> "CpuSnapshot":
        ticks = read_cpu_ticks()
        busy = sum(t for i, t in enumerate(ticks) if i not in IDLE_COLUMNS and i != STEAL_COLUMN)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(
            busy_s=busy / CLOCK_TICKS_PER_SECOND,
            steal_s=ticks[STEAL_COLUMN] / CLOCK_TICKS_PER_SECOND,
            children_cpu_s=usage.ru_utime + usage.ru_stime,
        )


def foreign_load(before: CpuSnapshot, after: CpuSnapshot, wall_s: float) -> dict:
    """CPU used by others between two snapshots taken around one waited-for child.

    Everything busy on the machine minus what the child itself used. This
    (idle, blocked on the child's pipes) process and the kernel add a little,
    so shares under a few percent are noise.
    """
    child_cpu = after.children_cpu_s - before.children_cpu_s
    other_cpu = max(0.0, (after.busy_s - before.busy_s) - child_cpu)
    steal = after.steal_s - before.steal_s
    capacity = wall_s * (os.cpu_count() or 1)
    return {
        "run_wall_s": round(wall_s, 2),
        "child_cpu_s": round(child_cpu, 2),
        "other_cpu_s": round(other_cpu, 2),
        "steal_s": round(steal, 2),
        "other_share": round((other_cpu + steal) / capacity, 3) if capacity else 0.0,
    }


def busy_fraction(interval_s: float) -> float:
    """Fraction of all CPUs' capacity in use (or stolen) over the next interval."""
    start_ticks = read_cpu_ticks()
    time.sleep(interval_s)
    deltas = [b - a for a, b in zip(start_ticks, read_cpu_ticks())]
    total = sum(deltas)
    idle = sum(deltas[i] for i in IDLE_COLUMNS)
    return (total - idle) / total if total else 0.0


def wait_until_idle(max_wait_s: float, threshold: float, interval_s: float = 1.0) -> float:
    """Waits until the machine is quiet for one interval; returns the last busy fraction.

    Gives up after max_wait_s: the run then goes ahead and is flagged by its
    measured foreign load instead.
    """
    deadline = time.monotonic() + max_wait_s
    fraction = busy_fraction(interval_s)
    while fraction > threshold and time.monotonic() < deadline:
        fraction = busy_fraction(interval_s)
    return fraction
