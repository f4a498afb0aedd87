"""What the CPU offers: how many physical cores this process may run on."""

from __future__ import annotations

import os


def usable_logical_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return set(range(os.cpu_count() or 1))


def physical_core_count(cpuinfo_path: str = "/proc/cpuinfo") -> int:
    """Physical cores among the logical CPUs this process may use.

    Hyper-threads share one core's floating-point units, so a GEMM-bound training step gains
    nothing from a second thread per core and loses to contention; count cores, not threads.
    """
    usable = usable_logical_cpus()
    try:
        with open(cpuinfo_path) as f:
            text = f.read()
    except OSError:
        return max(1, len(usable))
    cores = set()
    for block in text.strip().split("\n\n"):
        fields = dict(_cpuinfo_field(line) for line in block.splitlines() if ":" in line)
        if int(fields.get("processor", -1)) in usable:
            cores.add((fields.get("physical id", "0"), fields.get("core id", fields.get("processor"))))
    return max(1, len(cores)) if cores else max(1, len(usable))


def _cpuinfo_field(line: str) -> tuple[str, str]:
    key, _, value = line.partition(":")
    return key.strip(), value.strip()
