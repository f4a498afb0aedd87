"""One record of the whole machine, so that plans and advice can be made for machines we do not have."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from hpctrain.hardware.inventory import CpuInfo, GpuInfo, MemoryInfo, TorchBuild, cpu_info, gpu_infos, memory_info, torch_build
from hpctrain.hardware.launcher import LauncherInfo, detect_launcher


@dataclasses.dataclass(frozen=True, kw_only=True)
class Machine:
    cpu: CpuInfo
    memory: MemoryInfo
    gpus: tuple[GpuInfo, ...]
    pytorch: TorchBuild
    launcher: LauncherInfo


def inspect_machine(env: Mapping[str, str] | None = None) -> Machine:
    """This machine, as this process sees it (about a millisecond: /proc reads and CUDA properties)."""
    return Machine(
        cpu=cpu_info(),
        memory=memory_info(),
        gpus=gpu_infos(),
        pytorch=torch_build(),
        launcher=detect_launcher(env),
    )
