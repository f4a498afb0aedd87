"""The resolved plan: every hardware decision made once, before training, with its reason."""

from __future__ import annotations

import dataclasses

import torch

from hpctrain.errors import ConfigError
from hpctrain.hardware.cpu import physical_core_count


@dataclasses.dataclass(frozen=True, kw_only=True)
class Plan:
    """What one training process runs on. Made by :func:`make_plan`; read-only below it."""

    device: torch.device
    threads: int
    data_placement: str  # "device": the whole data set lives on ``device`` as one tensor
    executor: str = "auto"  # "static", "autograd", or "auto": static where the model allows it
    tune_threads: bool = False  # threads came from a rule; fit may measure a better count
    batch_size: int | None = None  # set when fit(batch_size="auto") has chosen one
    cuda_graph: bool = False  # on a GPU, replay groups of static steps as one CUDA graph (opt-in for now)
    world_size: int = 1
    rank: int = 0
    # The distribute layer's collectives (sum, broadcast, gather) when world_size > 1.
    communicator: object = dataclasses.field(default=None, compare=False, repr=False)
    reasons: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        if self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}.")
        if self.executor not in EXECUTORS:
            raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}; got {self.executor!r}.")
        if self.data_placement not in ("device", "host"):
            raise ConfigError(f"data_placement must be 'device' or 'host', got {self.data_placement!r}.")

    def with_choice(self, key: str, value, reason: str) -> "Plan":
        """A copy with one more decision made, and the reason recorded for ``explain``."""
        reasons = tuple(item for item in self.reasons if item[0] != key) + ((key, f"{value} ({reason})"),)
        return dataclasses.replace(self, **{key: value}, reasons=reasons)

    def explain(self) -> str:
        lines = [f"{key}: {value}" for key, value in self.reasons]
        return "\n".join(lines)


EXECUTORS = ("auto", "static", "autograd")


def make_plan(*, device: str | torch.device = "auto", threads: int | str = "auto", executor: str = "auto",
              cuda_graph: bool = False) -> Plan:
    """Resolve ``"auto"`` choices against this machine; explicit values always win."""
    resolved_device, device_reason = _resolve_device(device)
    resolved_threads, threads_reason = _resolve_threads(threads)
    return Plan(
        tune_threads=threads == "auto" and resolved_device.type == "cpu" and resolved_threads > 1,
        device=resolved_device,
        threads=resolved_threads,
        data_placement="device",
        executor=executor,
        cuda_graph=cuda_graph,
        reasons=(
            ("device", f"{resolved_device} ({device_reason})"),
            ("threads", f"{resolved_threads} ({threads_reason})"),
            ("data", "resident on the device as one tensor; batches gathered by index"),
            ("executor", f"{executor} ({'decided per model at fit' if executor == 'auto' else 'given explicitly'})"),
        ),
    )


def _resolve_device(device) -> tuple[torch.device, str]:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device()), "a CUDA GPU is visible"
        return torch.device("cpu"), "no CUDA GPU is visible"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r} is not a device PyTorch knows; use 'auto', 'cpu' or 'cuda:N'.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but no CUDA GPU is visible; use 'cpu' or 'auto'.")
    return resolved, "given explicitly"


def _resolve_threads(threads) -> tuple[int, str]:
    if threads == "auto":
        return physical_core_count(), "one per physical core this process may use; fit measures fewer"
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ConfigError(f"threads must be 'auto' or a whole number >= 1, got {threads!r}.")
    return threads, "given explicitly"
