"""``hpctrain doctor``: the machine, the plan hpctrain makes for it, and advice in plain words.

Each piece of advice is a rule stated from the facts gathered here and from what the code does
(the plan's choices, float32 training); none promises a speed-up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from hpctrain.hardware import dp_decision
from hpctrain.hardware.dp_decision import ReplicaTimings
from hpctrain.hardware.inventory import (
    CPU_FEATURE_LABELS,
    CpuInfo,
    GpuInfo,
    MemoryInfo,
    TorchBuild,
)
from hpctrain.hardware.launcher import LauncherInfo
from hpctrain.hardware.machine import Machine, inspect_machine
from hpctrain.hardware.plan import Plan, make_plan

GIB = 1024**3


@dataclasses.dataclass(frozen=True, kw_only=True)
class Diagnosis:
    machine: Machine
    plan: Plan
    advice: tuple[str, ...]
    # Cached measurements of whether local data-parallel processes pay: (model, timings), latest first.
    data_parallel: tuple[tuple[str, ReplicaTimings], ...] = ()


def diagnose(env: Mapping[str, str] | None = None) -> Diagnosis:
    machine = inspect_machine(env)
    plan = make_plan(machine=machine)
    return Diagnosis(machine=machine, plan=plan, advice=advise(machine, plan),
                     data_parallel=tuple(dp_decision.measured_entries()))


# ------------------------------------------------------------------------------------- advice


def advise(machine: Machine, plan: Plan) -> tuple[str, ...]:
    """Plain-words consequences of this machine for training with ``plan``."""
    if plan.device.type == "cuda":
        advice = _gpu_advice(machine.gpus[plan.device.index or 0], plan)
    else:
        advice = _cpu_advice(machine, plan)
    return tuple(advice + _multi_gpu_advice(machine, plan) + _launcher_advice(machine, plan))


def _cpu_advice(machine: Machine, plan: Plan) -> list[str]:
    cpu = machine.cpu
    prefix = "no GPU: " if not machine.gpus else ""
    if plan.tune_threads:
        how_chosen = "one per physical core; fit measures whether fewer is faster for your model"
    elif plan.threads == cpu.physical_cores:
        how_chosen = "one per physical core"
    else:
        how_chosen = "as the plan sets"
    advice = [f"{prefix}training runs on {plan.threads} CPU {_plural(plan.threads, 'thread')} ({how_chosen})"]
    if cpu.logical_cpus_usable > cpu.physical_cores >= plan.threads:
        advice.append(
            f"{cpu.logical_cpus_usable} logical CPUs sit on {cpu.physical_cores} physical cores: hpctrain runs at most "
            "one thread per core, since the hardware threads of a core share its floating-point units"
        )
    advice.append(_cpu_precision_advice(cpu))
    return advice


def _cpu_precision_advice(cpu: CpuInfo) -> str:
    if cpu.features is None:
        return "CPU instruction flags could not be read here: training stays in float32"
    if cpu.features.bf16_hardware:
        present = [CPU_FEATURE_LABELS[flag] for flag in ("avx512_bf16", "amx_bf16") if getattr(cpu.features, flag)]
        return (f"bfloat16 autocast can pay on this CPU ({', '.join(present)}): make_plan(precision='auto') "
                "measures it on your model; the default is float32, as in Keras")
    return "no bf16 hardware: training stays in float32"


def _gpu_advice(gpu: GpuInfo, plan: Plan) -> list[str]:
    major, minor = gpu.compute_capability
    advice = [
        f"training runs on {plan.device} ({gpu.name}, {_gib(gpu.total_memory_bytes)}); the training set is held "
        "there as one tensor, so it has to fit in that memory beside the model"
    ]
    if gpu.precision.bf16:
        advice.append(
            f"bfloat16 autocast can pay on this GPU (bf16 tensor cores, compute capability {major}.{minor}): "
            "make_plan(precision='auto') measures it on your model; the default is float32, as in Keras"
        )
    else:
        advice.append(f"no bf16 tensor cores (compute capability {major}.{minor} < 8.0): training stays in float32")
    return advice


def _multi_gpu_advice(machine: Machine, plan: Plan) -> list[str]:
    count = len(machine.gpus)
    if count < 2:
        return []
    advice = [
        f"{count} GPUs are visible; this process trains on {plan.device}; tf.distribute.MirroredStrategy() "
        "trains on all of them, one process per GPU"
    ]
    if not machine.pytorch.distributed.nccl:
        advice.append("this PyTorch build has no NCCL: collectives across these GPUs would use gloo")
    return advice


def _launcher_advice(machine: Machine, plan: Plan) -> list[str]:
    launcher = machine.launcher
    if launcher.name == "none":
        return []
    rank = "?" if launcher.rank is None else launcher.rank
    world = "?" if launcher.world_size is None else launcher.world_size
    started = f"started by {launcher.name} as rank {rank} of {world}"
    if launcher.world_size is not None and launcher.world_size != plan.world_size:
        started += ("; a model compiled inside tf.distribute.MirroredStrategy().scope() (or "
                    "MultiWorkerMirroredStrategy) trains as one replica of the group, any other on its own")
    advice = [started]
    advice += [f"launcher variable {problem}" for problem in launcher.problems]
    if not machine.pytorch.distributed.available:
        advice.append("this PyTorch build has no torch.distributed: processes cannot form a process group")
    return advice


# ------------------------------------------------------------------------------------ outputs


def diagnosis_as_dict(diagnosis: Diagnosis) -> dict:
    """The same facts as the text screen, with machine-readable keys and plain JSON values."""
    machine = dataclasses.asdict(diagnosis.machine)
    return {
        **machine,
        "plan": plan_as_dict(diagnosis.plan),
        "advice": list(diagnosis.advice),
        "data_parallel": [_timings_as_dict(model, timings) for model, timings in diagnosis.data_parallel],
    }


def plan_as_dict(plan: Plan) -> dict:
    fields = plan.field_values()
    decision = plan.data_parallel
    if decision is not None:
        fields["data_parallel"] = {"requested": decision.requested, "replicas": decision.replicas,
                                   "explicit": decision.explicit,
                                   "timings": None if decision.timings is None else decision.timings.as_dict()}
    return {**fields, "device": str(plan.device), "reasons": dict(plan.reasons)}


def _timings_as_dict(model: str, timings: ReplicaTimings) -> dict:
    return {"model": model, **timings.as_dict(), "parallel_seconds": timings.parallel_seconds,
            "speedup": timings.speedup, "pays": timings.pays}


def render_text(diagnosis: Diagnosis) -> str:
    """The facts as titled sections of text (the command puts its heading above them)."""
    machine = diagnosis.machine
    sections = [
        ("Machine / CPU", _cpu_lines(machine.cpu)),
        ("Memory", _memory_lines(machine.memory)),
        ("GPUs", _gpu_lines(machine.gpus)),
        ("PyTorch", _pytorch_lines(machine.pytorch)),
        ("Launcher", _launcher_lines(machine.launcher)),
        ("Plan", diagnosis.plan.explain().splitlines()),
        ("Data parallel", data_parallel_lines(diagnosis.data_parallel)),
        ("Advice", [f"- {line}" for line in diagnosis.advice]),
    ]
    return "\n\n".join("\n".join([title, *(f"  {line}" for line in lines)]) for title, lines in sections)


# The latest few: one line per model, batch size and process count measured on this machine.
DATA_PARALLEL_LINES = 5


def data_parallel_lines(entries) -> list[str]:
    """What the cache holds on whether several local processes pay, or how to have it measured."""
    if not entries:
        return ["not measured yet: the first fit of a model compiled in tf.distribute.MirroredStrategy().scope() "
                "measures, for that model and batch size, whether one process per physical core beats one process "
                "(MirroredStrategy(devices=[...]) measures the count given), and the numbers show here"]
    lines = []
    for model, timings in entries[:DATA_PARALLEL_LINES]:
        verdict = f"{timings.replicas} processes" if timings.pays else "one process"
        lines.append(f"{model}: {verdict} ({timings.replicas} would be {timings.comparison()}; measured "
                     f"{timings.measured_at}): {timings.describe()}")
    if len(entries) > DATA_PARALLEL_LINES:
        lines.append(f"... and {len(entries) - DATA_PARALLEL_LINES} earlier measurements")
    return lines


def _cpu_lines(cpu: CpuInfo) -> list[str]:
    vendor = f" ({cpu.vendor})" if cpu.vendor else ""
    return [
        f"model:            {cpu.model or 'unknown'}{vendor}",
        f"logical CPUs:     {cpu.logical_cpus_usable} usable by this process ({cpu.logical_cpus_total} in the machine)",
        f"physical cores:   {cpu.physical_cores} usable",
        f"features:         {_feature_summary(cpu)}",
        f"PyTorch kernels:  {cpu.pytorch_kernels} (torch.backends.cpu.get_cpu_capability())",
    ]


def _feature_summary(cpu: CpuInfo) -> str:
    if cpu.features is None:
        return "unknown (no x86 flags in /proc/cpuinfo)"
    return ", ".join(f"{label} {_yes_no(getattr(cpu.features, flag))}" for flag, label in CPU_FEATURE_LABELS.items())


def _memory_lines(memory: MemoryInfo) -> list[str]:
    return [f"total:      {_gib(memory.total_bytes)}", f"available:  {_gib(memory.available_bytes)}"]


def _gpu_lines(gpus: tuple[GpuInfo, ...]) -> list[str]:
    if not gpus:
        return ["none (torch.cuda.is_available() is False)"]
    return [
        f"cuda:{gpu.index}  {gpu.name}, {_gib(gpu.total_memory_bytes)}, compute capability "
        f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}; "
        + ", ".join(f"{name} {_yes_no(value)}" for name, value in dataclasses.asdict(gpu.precision).items())
        for gpu in gpus
    ]


def _pytorch_lines(build: TorchBuild) -> list[str]:
    backends = build.distributed
    distributed = (
        f"available; backends gloo {_yes_no(backends.gloo)}, nccl {_yes_no(backends.nccl)}, mpi {_yes_no(backends.mpi)}"
        if backends.available
        else "not in this build"
    )
    return [
        f"version:      {build.version}",
        f"CUDA:         {build.cuda or 'none (CPU-only build)'}",
        f"cuDNN:        {build.cudnn or 'none'}",
        f"distributed:  {distributed}",
    ]


def _launcher_lines(launcher: LauncherInfo) -> list[str]:
    if launcher.name == "none":
        return ["none (no torchrun, MPI or Slurm variables in the environment)"]
    unknown = "unknown"
    return [
        f"{launcher.name} (from {', '.join(launcher.variables)})",
        f"rank {launcher.rank if launcher.rank is not None else unknown} of "
        f"{launcher.world_size if launcher.world_size is not None else unknown}, "
        f"local rank {launcher.local_rank if launcher.local_rank is not None else unknown}",
    ]


def _gib(size_bytes: int | None) -> str:
    return "unknown" if size_bytes is None else f"{size_bytes / GIB:.1f} GiB"


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _plural(count: int, word: str) -> str:
    return word if count == 1 else word + "s"
