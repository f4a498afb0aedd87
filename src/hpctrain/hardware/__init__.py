"""What the machine is and the choices made from it, recorded in one :class:`Plan`."""

from hpctrain.hardware.cpu import physical_core_count
from hpctrain.hardware.doctor import Diagnosis, advise, diagnose, diagnosis_as_dict, render_text
from hpctrain.hardware.inventory import (
    CpuFeatures,
    CpuInfo,
    GpuInfo,
    GpuPrecision,
    MemoryInfo,
    TorchBuild,
    cpu_info,
    gpu_infos,
    gpu_precision,
    memory_info,
    parse_cpuinfo,
    parse_meminfo,
    torch_build,
)
from hpctrain.hardware.launcher import LauncherInfo, detect_launcher
from hpctrain.hardware.machine import Machine, inspect_machine
from hpctrain.hardware import plan_cache
from hpctrain.hardware.plan import Plan, make_plan

__all__ = [
    "CpuFeatures",
    "CpuInfo",
    "Diagnosis",
    "GpuInfo",
    "GpuPrecision",
    "LauncherInfo",
    "Machine",
    "MemoryInfo",
    "Plan",
    "TorchBuild",
    "advise",
    "cpu_info",
    "detect_launcher",
    "diagnose",
    "diagnosis_as_dict",
    "gpu_infos",
    "gpu_precision",
    "inspect_machine",
    "make_plan",
    "memory_info",
    "parse_cpuinfo",
    "parse_meminfo",
    "physical_core_count",
    "plan_cache",
    "render_text",
    "torch_build",
]
