"""Descriptions of machines we do not have, for planning and advice tests."""

from hpctrain.hardware import CpuInfo, GpuInfo, Machine, MemoryInfo, TorchBuild, gpu_precision, parse_cpuinfo
from hpctrain.hardware.inventory import DistributedBackends
from hpctrain.hardware.launcher import NO_LAUNCHER

# Two logical CPUs of a Sapphire Rapids part (flags shortened to the ones around what we read).
SAPPHIRE_RAPIDS_CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512dq avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
physical id\t: 0
core id\t\t: 1
flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512dq avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""

# Skylake-SP: AVX-512F but no bf16 instructions.
SKYLAKE_CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512dq avx512cd avx512bw avx512vl
"""


def cpu(text: str, *, physical_cores: int = 4, logical: int = 4) -> CpuInfo:
    identity = parse_cpuinfo(text)
    return CpuInfo(
        model=identity.model,
        vendor=identity.vendor,
        logical_cpus_usable=logical,
        logical_cpus_total=logical,
        physical_cores=physical_cores,
        features=identity.features,
        pytorch_kernels="AVX512",
    )


def machine(cpu: CpuInfo, *, gpus=(), nccl=False, launcher=NO_LAUNCHER) -> Machine:
    return Machine(
        cpu=cpu,
        memory=MemoryInfo(total_bytes=16 * 1024**3, available_bytes=8 * 1024**3),
        gpus=tuple(gpus),
        pytorch=TorchBuild(
            version="2.x", cuda="12.8" if gpus else None, cudnn=None,
            distributed=DistributedBackends(available=True, gloo=True, nccl=nccl, mpi=False),
        ),
        launcher=launcher,
    )


def fake_gpu(index: int, capability: tuple[int, int], *, name: str = "Test GPU", memory_gib: int = 40) -> GpuInfo:
    return GpuInfo(
        index=index, name=name, total_memory_bytes=memory_gib * 1024**3,
        compute_capability=capability, precision=gpu_precision(capability),
    )
