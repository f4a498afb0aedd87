"""The resolved plan: every decision made once, before training, with its reason.

A :class:`Plan` is three frozen parts, each settled by whoever decides it:

- :class:`HardwarePlan`: what the machine decides (device, threads, precision, host memory,
  CUDA graphs), resolved by :func:`make_plan`;
- :class:`EngineChoices`: what the engine decides for a model at ``fit`` (executor, step loop,
  compile, batch size, learning-rate scaling), settled before the first training step;
- :class:`ProcessGroupFacts`: the processes that train together (world size, rank, the
  communicator, the data-parallel decision), fixed when the group is joined.

Each part keeps the reasons for its own decisions; ``plan.explain()`` lists them part by part.
"""

from __future__ import annotations

import dataclasses

import torch

from hpctrain.arguments import is_whole_number
from hpctrain.errors import ConfigError
from hpctrain.hardware import host_memory
from hpctrain.hardware.inventory import CPU_FEATURE_LABELS
from hpctrain.hardware.machine import Machine, inspect_machine

Reasons = tuple[tuple[str, str], ...]


def _with_reason(reasons: Reasons, key: str, text: str) -> Reasons:
    """``reasons`` with ``key`` explained by ``text``, last (a decision made again moves to the end)."""
    return tuple(item for item in reasons if item[0] != key) + ((key, text),)


@dataclasses.dataclass(frozen=True, kw_only=True)
class HardwarePlan:
    """What the machine decides: where and on how many threads the steps run, in which precision."""

    device: torch.device
    threads: int
    tune_threads: bool = False  # threads came from a rule; fit may measure a better count
    cuda_graph: bool = False  # on a GPU, replay groups of static steps as one CUDA graph (opt-in for now)
    precision: str = "float32"  # "float32", "bfloat16" (autocast), or "auto": fit measures both
    keep_host_memory: bool = False  # glibc's malloc keeps freed blocks between steps (hardware.host_memory)
    reasons: Reasons = ()

    def __post_init__(self):
        if self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}.")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineChoices:
    """What the engine decides for one model at ``fit``: how its steps run and on which batches."""

    executor: str = "auto"  # "static", "autograd", or "auto": static where the model allows it
    batch_size: int | None = None  # set when fit(batch_size="auto") has chosen one
    compile: bool | str = False  # torch.compile the module's forward; "auto": fit decides from measurements
    lr_scaling: str | None = None  # with batch_size="auto": "linear" or "sqrt" rescaling from REFERENCE_BATCH
    reasons: Reasons = ()

    def __post_init__(self):
        if self.executor not in EXECUTORS:
            raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}; got {self.executor!r}.")
        if self.compile not in (True, False, "auto"):
            raise ConfigError(f"compile must be True, False or 'auto'; got {self.compile!r}.")
        if self.lr_scaling not in LR_SCALING_RULES:
            raise ConfigError(f"lr_scaling must be None, 'linear' or 'sqrt'; got {self.lr_scaling!r}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProcessGroupFacts:
    """The processes that train together, as they were when the group was joined."""

    world_size: int = 1
    rank: int = 0
    # The distribute layer's collectives (sum, broadcast, gather) when world_size > 1.
    communicator: object = dataclasses.field(default=None, compare=False, repr=False)
    # How many local processes a data-parallel strategy runs, measured on the model
    # (a hardware.dp_decision.ReplicaDecision); None where no strategy asked.
    data_parallel: object = dataclasses.field(default=None, compare=False)
    reasons: Reasons = ()


PARTS = {"hardware": HardwarePlan, "engine": EngineChoices, "group": ProcessGroupFacts}
PART_TITLES = {"hardware": "[hardware]", "engine": "[engine: settled at fit]", "group": "[process group]"}
# Decisions explained without a field of their own, by the part that makes them; any other key the engine's.
_REASON_PARTS = {"device": "hardware", "threads": "hardware", "data": "hardware", "precision": "hardware",
                 "cuda_graph": "hardware", "host memory": "hardware", "workers": "group", "world_size": "group"}
_FIELD_PARTS = {field.name: part for part, cls in PARTS.items() for field in dataclasses.fields(cls)
                if field.name != "reasons"}


def part_of(key: str) -> str:
    """The name of the part (``hardware``, ``engine``, ``group``) that decides ``key``."""
    return _FIELD_PARTS.get(key) or _REASON_PARTS.get(key, "engine")


@dataclasses.dataclass(frozen=True, init=False)
class Plan:
    """What one training process runs on: its hardware, the engine's choices and its process group.
    Made by :func:`make_plan`; read-only below it. Every field of the parts reads as the plan's own
    (``plan.device``, ``plan.executor``, ``plan.world_size``...).

    ``Plan(device=..., threads=...)`` builds the parts from their fields; ``dataclasses.replace(plan,
    world_size=2)`` changes a field of whichever part holds it.
    """

    hardware: HardwarePlan
    engine: EngineChoices
    group: ProcessGroupFacts

    def __init__(self, *, hardware: HardwarePlan | None = None, engine: EngineChoices | None = None,
                 group: ProcessGroupFacts | None = None, reasons: Reasons | None = None, **fields):
        unknown = sorted(set(fields) - set(_FIELD_PARTS))
        if unknown:
            raise TypeError(f"Plan got unknown fields {unknown}; its fields are {sorted(_FIELD_PARTS)}.")
        given = {"hardware": hardware, "engine": engine, "group": group}
        for name, cls in PARTS.items():
            own = {key: value for key, value in fields.items() if _FIELD_PARTS[key] == name}
            if reasons is not None:
                own["reasons"] = tuple(item for item in reasons if part_of(item[0]) == name)
            part = given[name]
            part = cls(**own) if part is None else dataclasses.replace(part, **own) if own else part
            object.__setattr__(self, name, part)

    def __getattr__(self, name: str):
        part = _FIELD_PARTS.get(name)
        if part is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(object.__getattribute__(self, part), name)

    def field_values(self) -> dict:
        """Every field of the parts by name (the reasons apart), as the plan reads them."""
        return {name: getattr(self, name) for name in _FIELD_PARTS}

    @property
    def reasons(self) -> Reasons:
        """Every decision's ``(key, reason)``: the hardware's, the engine's, then the process group's."""
        return self.hardware.reasons + self.engine.reasons + self.group.reasons

    def with_choice(self, key: str, value, reason: str) -> Plan:
        """A copy with one more decision made, and the reason recorded for ``explain``."""
        name = part_of(key)
        part = getattr(self, name)
        changed = dataclasses.replace(part, reasons=_with_reason(part.reasons, key, f"{value} ({reason})"),
                                      **({key: value} if key in _FIELD_PARTS else {}))
        return dataclasses.replace(self, **{name: changed})

    def with_reason(self, key: str, text: str) -> Plan:
        """A copy that explains ``key``, a choice made outside the plan's fields (e.g. the learning rate)."""
        name = part_of(key)
        part = getattr(self, name)
        return dataclasses.replace(self, **{name: dataclasses.replace(part, reasons=_with_reason(part.reasons, key, text))})

    def with_data_parallel(self, decision) -> Plan:
        """A copy recording how many local processes train and the measurement that settled it."""
        group = self.with_reason("workers", f"{decision.replicas} ({decision.reason()})").group
        return dataclasses.replace(self, group=dataclasses.replace(group, data_parallel=decision))

    def explain(self) -> str:
        """Every decision with its reason, part by part under the part's title."""
        lines = []
        for name, title in PART_TITLES.items():
            reasons = getattr(self, name).reasons
            if reasons:
                lines += [title, *(f"{key}: {value}" for key, value in reasons)]
        return "\n".join(lines)


EXECUTORS = ("auto", "static", "autograd")
PRECISIONS = ("auto", "float32", "bfloat16")
# Keras's dtype-policy names and the short forms people type, for the same two precisions.
PRECISION_ALIASES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
                     "mixed_bfloat16": "bfloat16", "auto": "auto"}
LR_SCALING_RULES = (None, "linear", "sqrt")


def make_plan(*, device: str | torch.device = "auto", threads: int | str = "auto", executor: str = "auto",
              cuda_graph: bool = False, precision: str = "float32", compile: bool | str = "auto",
              lr_scaling: str | None = None, keep_host_memory: bool | str = "auto",
              machine: Machine | None = None) -> Plan:
    """Resolve ``"auto"`` choices against ``machine`` (this one by default); explicit values always win.

    What only a measurement on the user's model can settle (threads, precision, compile, batch
    size) is left for ``fit`` to measure; the rules that need no measurement are applied here.
    """
    machine = machine or inspect_machine()
    if not isinstance(cuda_graph, bool):
        raise ConfigError(f"cuda_graph must be True or False; got {cuda_graph!r}.")
    resolved_device, device_reason = _resolve_device(device, machine)
    resolved_threads, threads_reason = _resolve_threads(threads, machine)
    resolved_precision, precision_reason = _resolve_precision(precision, resolved_device, machine)
    resolved_compile, compile_reason = _resolve_compile(compile)
    keeps_memory, memory_reason = _resolve_host_memory(keep_host_memory, resolved_device)
    return Plan(
        tune_threads=threads == "auto" and resolved_device.type == "cpu" and resolved_threads > 1,
        device=resolved_device,
        threads=resolved_threads,
        executor=executor,
        cuda_graph=cuda_graph,
        precision=resolved_precision,
        compile=resolved_compile,
        lr_scaling=lr_scaling,
        keep_host_memory=keeps_memory,
        reasons=(
            ("device", f"{resolved_device} ({device_reason})"),
            ("workers", _workers_reason(machine, resolved_device)),
            ("threads", f"{resolved_threads} ({threads_reason})"),
            ("data", "resident on the device as one tensor; batches gathered by index"),
            ("executor", f"{executor} ({'decided per model at fit' if executor == 'auto' else 'given explicitly'})"),
            ("precision", f"{resolved_precision} ({precision_reason})"),
            ("compile", f"{resolved_compile} ({compile_reason})"),
            ("host memory", memory_reason),
        ),
    )


def _resolve_host_memory(keep, device: torch.device) -> tuple[bool, str]:
    if keep not in (True, False, "auto"):
        raise ConfigError(f"keep_host_memory must be True, False or 'auto'; got {keep!r}.")
    if keep is False:
        return False, "malloc's defaults (given explicitly)"
    if device.type != "cpu" and keep == "auto":
        return False, "malloc's defaults (tensors live on the GPU)"
    if not host_memory.malloc_is_glibc():
        return False, "malloc's defaults (the C library is not glibc)"
    return True, (f"kept (malloc keeps up to {host_memory.TRIM_THRESHOLD_BYTES >> 20} MiB of freed blocks, so a "
                  "step's large tensors reuse pages instead of faulting in fresh ones)")


def _workers_reason(machine: Machine, device: torch.device) -> str:
    launcher = machine.launcher
    if launcher.name != "none" and launcher.world_size:
        return (f"{launcher.world_size} (started by {launcher.name}; a model compiled in a MirroredStrategy or "
                "MultiWorkerMirroredStrategy scope trains as one replica of them)")
    gpus = len(machine.gpus)
    if device.type == "cuda" and gpus > 1:
        return (f"1 ({gpus} GPUs visible: MirroredStrategy() trains one replica per GPU, or "
                f"hpctrain launch --nproc-per-node {gpus})")
    return ("1 (one process; several CPU processes split the same cores: a model compiled in a MirroredStrategy() "
            "scope is measured at fit, and trains in several only where they pay)")


def _resolve_precision(precision, device: torch.device, machine: Machine) -> tuple[str, str]:
    resolved = PRECISION_ALIASES.get(str(precision).lower()) if isinstance(precision, str) else None
    if resolved is None:
        raise ConfigError(f"precision must be 'auto', 'float32' or 'bfloat16' (or 'mixed_bfloat16'); got {precision!r}.")
    if resolved != "auto":
        return resolved, "as Keras trains by default" if resolved == "float32" else "given explicitly"
    has_bf16, hardware = bf16_hardware(machine, device)
    if not has_bf16:
        return "float32", f"no bfloat16 hardware: {hardware}"
    return "auto", f"{hardware}: fit measures bfloat16 autocast against float32 on this model"


def bf16_hardware(machine: Machine, device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` computes in bfloat16 natively, and the fact that says so."""
    if device.type == "cuda":
        gpu = machine.gpus[device.index or 0]
        major, minor = gpu.compute_capability
        if gpu.precision.bf16:
            return True, f"{gpu.name} has bf16 tensor cores (compute capability {major}.{minor})"
        return False, f"{gpu.name} has compute capability {major}.{minor} < 8.0"
    features = machine.cpu.features
    if features is None:
        return False, "the CPU's instruction flags could not be read"
    present = [CPU_FEATURE_LABELS[flag] for flag in ("avx512_bf16", "amx_bf16") if getattr(features, flag)]
    if present:
        return True, f"this CPU has {' and '.join(present)}"
    return False, "this CPU has neither AVX-512 BF16 nor AMX"


def _resolve_compile(compile) -> tuple[bool | str, str]:
    if compile in ("auto", True, False):
        return compile, ("fit compiles only where the measured speed-up repays the compile time"
                         if compile == "auto" else "given explicitly")
    raise ConfigError(f"compile must be True, False or 'auto'; got {compile!r}.")


def _resolve_device(device, machine: Machine) -> tuple[torch.device, str]:
    if device == "auto":
        if machine.gpus:
            return torch.device("cuda", machine.gpus[0].index), f"a CUDA GPU is visible ({machine.gpus[0].name})"
        return torch.device("cpu"), "no CUDA GPU is visible"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r} is not a device PyTorch knows; use 'auto', 'cpu' or 'cuda:N'.") from exc
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r}: hpctrain trains on 'cpu' or 'cuda[:N]' ('auto' picks); "
                          f"{resolved.type} devices are not supported.")
    if resolved.type == "cuda" and not machine.gpus:
        raise ConfigError(f"device {device!r} was asked for but no CUDA GPU is visible; use 'cpu' or 'auto'.")
    return resolved, "given explicitly"


def _resolve_threads(threads, machine: Machine) -> tuple[int, str]:
    if threads == "auto":
        return machine.cpu.physical_cores, "one per physical core this process may use; fit measures fewer"
    if not is_whole_number(threads) or threads < 1:
        raise ConfigError(f"threads must be 'auto' or a whole number >= 1, got {threads!r}.")
    return int(threads), "given explicitly"
