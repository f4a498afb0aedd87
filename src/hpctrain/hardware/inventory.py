"""What the machine is: CPU, memory, GPUs and the PyTorch build, as frozen records.

Every parser takes the text it reads (``/proc/cpuinfo``, ``/proc/meminfo``) as an argument, so the
rules can be checked against fixtures from machines we do not have.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from hpctrain.hardware.cpu import physical_core_count, usable_logical_cpus


@dataclasses.dataclass(frozen=True, kw_only=True)
class CpuFeatures:
    """x86 instruction-set extensions that decide which kernels training can use."""

    avx2: bool
    fma: bool
    avx512f: bool
    avx512_bf16: bool
    amx_tile: bool
    amx_bf16: bool

    @property
    def bf16_hardware(self) -> bool:
        # The bfloat16 dot-product instructions. Without them bf16 values are widened to float32
        # for the arithmetic, so bf16 saves memory traffic at best, not compute.
        return self.avx512_bf16 or self.amx_bf16


# The /proc/cpuinfo flag names we look for; the CpuFeatures fields carry the same names.
TRAINING_CPU_FLAGS = tuple(field.name for field in dataclasses.fields(CpuFeatures))

CPU_FEATURE_LABELS = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512F",
    "avx512_bf16": "AVX-512 BF16",
    "amx_tile": "AMX tile",
    "amx_bf16": "AMX BF16",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class CpuIdentity:
    """What ``/proc/cpuinfo`` says about the CPU; ``features`` is None where it lists no x86 flags."""

    model: str | None
    vendor: str | None
    features: CpuFeatures | None


@dataclasses.dataclass(frozen=True, kw_only=True)
class CpuInfo:
    model: str | None
    vendor: str | None
    logical_cpus_usable: int  # the CPUs this process may be scheduled on (affinity mask)
    logical_cpus_total: int
    physical_cores: int  # among the usable CPUs; hpctrain's default thread count
    features: CpuFeatures | None  # None: not an x86 /proc/cpuinfo, so not read
    pytorch_kernels: str  # torch.backends.cpu.get_cpu_capability(): the vector ISA ATen dispatches to


@dataclasses.dataclass(frozen=True, kw_only=True)
class MemoryInfo:
    total_bytes: int | None
    available_bytes: int | None  # what can be allocated without swapping; None where unknown


@dataclasses.dataclass(frozen=True, kw_only=True)
class GpuPrecision:
    bf16: bool
    fp16: bool
    tf32: bool
    fp8: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class GpuInfo:
    index: int
    name: str
    total_memory_bytes: int
    compute_capability: tuple[int, int]
    precision: GpuPrecision


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistributedBackends:
    available: bool  # torch.distributed itself (absent from some macOS and mobile builds)
    gloo: bool
    nccl: bool
    mpi: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class TorchBuild:
    version: str
    cuda: str | None  # None: a CPU-only build
    cudnn: int | None
    distributed: DistributedBackends


# ---------------------------------------------------------------------------------------- CPU


def parse_cpuinfo(text: str) -> CpuIdentity:
    """Model, vendor and training features from the text of ``/proc/cpuinfo``."""
    blocks = [_cpuinfo_fields(block) for block in text.strip().split("\n\n") if block.strip()]
    model = _first_value(blocks, "model name")
    vendor = _first_value(blocks, "vendor_id")
    flag_sets = [set(fields["flags"].split()) for fields in blocks if "flags" in fields]
    if not flag_sets:  # e.g. ARM lists "Features" with other names; we do not guess at them
        return CpuIdentity(model=model, vendor=vendor, features=None)
    # A thread may run on any CPU, so a feature counts only if every CPU has it.
    common = set.intersection(*flag_sets)
    features = CpuFeatures(**{flag: flag in common for flag in TRAINING_CPU_FLAGS})
    return CpuIdentity(model=model, vendor=vendor, features=features)


def cpu_info(cpuinfo_path: str = "/proc/cpuinfo") -> CpuInfo:
    """This machine's CPU, as far as this process may use it."""
    text = _read_text(cpuinfo_path)
    identity = parse_cpuinfo(text) if text is not None else CpuIdentity(model=None, vendor=None, features=None)
    return CpuInfo(
        model=identity.model,
        vendor=identity.vendor,
        logical_cpus_usable=len(usable_logical_cpus()),
        logical_cpus_total=os.cpu_count() or 1,
        physical_cores=physical_core_count(cpuinfo_path),
        features=identity.features,
        pytorch_kernels=torch.backends.cpu.get_cpu_capability(),
    )


def _cpuinfo_fields(block: str) -> dict[str, str]:
    fields = {}
    for line in block.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _first_value(blocks: list[dict[str, str]], key: str) -> str | None:
    return next((fields[key] for fields in blocks if fields.get(key)), None)


# ------------------------------------------------------------------------------------- memory


def parse_meminfo(text: str) -> MemoryInfo:
    """Total and available bytes from the text of ``/proc/meminfo`` (which counts in KiB)."""
    kib = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            kib[key.strip()] = int(parts[0])
    # MemAvailable (Linux 3.14+) counts reclaimable page cache; MemFree alone would understate it.
    return MemoryInfo(
        total_bytes=kib["MemTotal"] * 1024 if "MemTotal" in kib else None,
        available_bytes=kib["MemAvailable"] * 1024 if "MemAvailable" in kib else None,
    )


def memory_info(meminfo_path: str = "/proc/meminfo") -> MemoryInfo:
    text = _read_text(meminfo_path)
    if text is not None:
        return parse_meminfo(text)
    return MemoryInfo(
        total_bytes=_sysconf_bytes("SC_PHYS_PAGES"),
        available_bytes=_sysconf_bytes("SC_AVPHYS_PAGES"),  # Linux-only name; None elsewhere
    )


def _sysconf_bytes(pages_name: str) -> int | None:
    try:
        return os.sysconf(pages_name) * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


# --------------------------------------------------------------------------------------- GPUs


def gpu_precision(capability: tuple[int, int]) -> GpuPrecision:
    """Number formats an NVIDIA GPU of this compute capability runs in hardware.

    bf16 and TF32 tensor cores arrived with Ampere (8.0), FP8 with Ada and Hopper (8.9, 9.0).
    The capability is used rather than ``torch.cuda.is_bf16_supported()``, which answers for the
    current device only and, in recent PyTorch, also says yes where bf16 is merely emulated.
    Every GPU PyTorch builds for computes in fp16.
    """
    return GpuPrecision(
        bf16=capability >= (8, 0),
        fp16=True,
        tf32=capability >= (8, 0),
        fp8=capability >= (8, 9),
    )


def gpu_infos() -> tuple[GpuInfo, ...]:
    """Every CUDA device this process sees; empty without CUDA."""
    if not torch.cuda.is_available():
        return ()
    return tuple(_gpu_info(index) for index in range(torch.cuda.device_count()))


def _gpu_info(index: int) -> GpuInfo:
    properties = torch.cuda.get_device_properties(index)
    capability = (properties.major, properties.minor)
    return GpuInfo(
        index=index,
        name=properties.name,
        total_memory_bytes=properties.total_memory,
        compute_capability=capability,
        precision=gpu_precision(capability),
    )


# ------------------------------------------------------------------------------ PyTorch build


def torch_build() -> TorchBuild:
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return TorchBuild(
        version=torch.__version__,
        cuda=torch.version.cuda,
        cudnn=cudnn,
        distributed=distributed_backends(),
    )


def distributed_backends() -> DistributedBackends:
    import torch.distributed as dist

    if not dist.is_available():  # the is_*_available helpers do not exist then
        return DistributedBackends(available=False, gloo=False, nccl=False, mpi=False)
    return DistributedBackends(
        available=True,
        gloo=dist.is_gloo_available(),
        nccl=dist.is_nccl_available(),
        mpi=dist.is_mpi_available(),
    )


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:  # not Linux, or /proc not mounted (some containers)
        return None
