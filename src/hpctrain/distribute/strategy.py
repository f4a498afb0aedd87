"""Data-parallel strategies with TensorFlow's names: ``MirroredStrategy`` and
``MultiWorkerMirroredStrategy``.

A strategy decides how many replicas train and where; it hands the engine a :class:`Plan` with
the replica's rank, the world size and a communicator. The model stays a plain module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import sys

import torch

from hpctrain.distribute.communicator import check_sharding
from hpctrain.distribute.runtime import DEFAULT_TIMEOUT_SECONDS, GroupSpec, group_spec_from_environment, join_group
from hpctrain.errors import ConfigError, warn
from hpctrain.hardware import make_plan, physical_core_count
from hpctrain.hardware.plan import Plan

_DEVICE_NAME = re.compile(r"^/?(?:device:)?(cpu|gpu|cuda)(?::(\d+))?$", re.IGNORECASE)
_scopes: list["Strategy"] = []


def parse_device(name: str) -> torch.device:
    """``"cuda:0"``, ``"/gpu:0"``, ``"/GPU:1"``, ``"cpu:0"``, ``"cpu:1"`` -> a torch device."""
    match = _DEVICE_NAME.match(str(name).strip())
    if match is None:
        raise ConfigError(f"device {name!r} is not one of the forms 'cuda:0', '/gpu:0', 'cpu:0'.")
    kind, index = match.group(1).lower(), int(match.group(2) or 0)
    return torch.device("cpu") if kind == "cpu" else torch.device("cuda", index)


def get_strategy() -> "Strategy | None":
    """The strategy whose ``scope()`` is open, if any (as ``tf.distribute.get_strategy``)."""
    return _scopes[-1] if _scopes else None


class Strategy:
    """Replicas of one model, each training on its share of every global batch."""

    pipelined = False  # a pipeline strategy builds each process's trainer itself

    def __init__(self, devices: list[torch.device], *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
                 explicit: bool = True, initial: int | None = None, sharding: str | None = None):
        # ``devices``: the replicas asked for (explicit) or considered (a default); until ``fit``
        # measures them, the first ``initial`` of them train.
        self.requested_devices = devices
        self.explicit = explicit
        self.devices = devices[:initial] if initial else devices
        self.timeout_seconds = timeout_seconds
        self.sharding = check_sharding(sharding)
        self.group: GroupSpec | None = group_spec_from_environment()
        self._plan: Plan | None = None
        self.decision = None  # how many local processes train the last model fitted, and why
        self._decisions: dict = {}

    @property
    def num_replicas_in_sync(self) -> int:
        return self.group.world_size if self.group is not None else len(self.devices)

    @contextlib.contextmanager
    def scope(self):
        _scopes.append(self)
        try:
            yield self
        finally:
            _scopes.remove(self)

    def on_compile(self, model) -> None:
        """A model was compiled inside this strategy's scope."""

    def plan(self) -> Plan:
        """The plan of this process's replica; joins the process group on first use."""
        if self._plan is None:
            self._plan = self._resolve_plan()
        return self._plan

    def choose_replicas(self, module, x, batch_size):
        """Called by ``fit`` before the first step: how many local processes train ``module`` on ``x``
        at ``batch_size``, measured once per model and batch (see ``hardware.dp_decision``). An
        explicit request runs as asked, with a warning where it is expected slower; a default falls
        back to one process, saying so, where more do not pay. None where nothing is to decide
        (launched processes, a pipeline, one replica)."""
        if self.group is not None or self.pipelined or len(self.requested_devices) < 2:
            return None
        asked = (id(module), batch_size, tuple(getattr(x, "shape", ())))
        decision = self._decisions.get(asked)
        if decision is None:
            from hpctrain.distribute.replica_count import measured_decision

            decision = self._decisions[asked] = measured_decision(
                module, x, batch_size, devices=self.requested_devices, explicit=self.explicit,
                threads=physical_core_count())
            if decision.notice():
                print(decision.notice(), file=sys.stderr)
            if decision.warning():
                warn(decision.warning())
        self.decision, self._plan = decision, None
        self.devices = self.requested_devices[:decision.replicas]
        return decision

    @property
    def spawns_locally(self) -> bool:
        """Started on its own with several replicas: ``fit`` spawns one process per replica."""
        return self.group is None and len(self.devices) > 1

    def fit(self, model, fit_arguments: dict):
        """Train ``model`` in spawned local replicas; the weights and History come back into it."""
        from hpctrain.distribute.spawn import fit_in_replicas

        return fit_in_replicas(model, self.devices, self.timeout_seconds, fit_arguments, sharding=self.sharding)

    def _resolve_plan(self) -> Plan:
        if self.group is None:
            if self.spawns_locally:
                raise ConfigError(
                    f"{type(self).__name__} with {len(self.devices)} local replicas trains them in spawned processes "
                    "during fit; evaluate and predict run in this process."
                )
            plan = make_plan(device=self.devices[0])
            return plan if self.decision is None else plan.with_data_parallel(self.decision)
        device = self._replica_device(self.group.local_rank)
        base = make_plan(device=device)
        communicator = join_group(self.group, device, self.timeout_seconds, sharding=self.sharding)
        threads = max(1, base.threads // self.group.local_world_size)
        plan = dataclasses.replace(base, world_size=self.group.world_size, rank=self.group.rank,
                                   communicator=communicator, threads=threads,
                                   # Timing steps per rank would put the ranks' collectives out of step.
                                   tune_threads=False)
        plan = plan.with_choice("threads", threads, f"the node's physical cores shared by "
                                f"{self.group.local_world_size} local replicas")
        if self.sharding == "fsdp":
            from hpctrain.distribute.fsdp import plan_for_sharding

            plan = plan_for_sharding(plan)
        return plan.with_choice("world_size", self.group.world_size,
                                f"rank {self.group.rank}, started by {self.group.launcher}; gradients averaged "
                                f"over the global batch with {'NCCL' if device.type == 'cuda' else 'gloo'}")

    def _replica_device(self, local_rank: int) -> torch.device:
        if torch.cuda.is_available() and any(d.type == "cuda" for d in self.devices):
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")


def _default_devices() -> list[torch.device]:
    if torch.cuda.is_available():
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [torch.device("cpu")]


class MirroredStrategy(Strategy):
    """Synchronous data parallelism over ``devices`` (default: every visible GPU, else the CPU).

    Several ``cpu:N`` entries mean several CPU worker processes: an explicit request, which runs as
    asked. Without ``devices`` on a machine without GPUs, ``fit`` measures whether one process per
    physical core would beat one process for the model and batch size, and trains in one where it
    would not. Under a launcher (torchrun, Slurm, MPI) each launched process is one replica.
    ``sharding="fsdp"``: each replica holds only a share of the weights, gradients and optimizer
    state (FSDP2), for a model too big for one device.
    """

    def __init__(self, devices=None, cross_device_ops=None, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
                 sharding: str | None = None):
        if devices:
            super().__init__([parse_device(d) for d in devices], timeout_seconds=timeout_seconds,
                             sharding=sharding)
            return
        default = _default_devices()
        if default[0].type == "cuda":
            super().__init__(default, timeout_seconds=timeout_seconds, explicit=False, sharding=sharding)
        else:  # one process per physical core considered; one trains until fit measures them
            super().__init__(default * physical_core_count(), timeout_seconds=timeout_seconds, explicit=False,
                             initial=1, sharding=sharding)


class MultiWorkerMirroredStrategy(Strategy):
    """One replica per launched process, across machines (torchrun, Slurm or MPI started them)."""

    def __init__(self, cluster_resolver=None, communication_options=None,
                 timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS, sharding: str | None = None):
        super().__init__(_default_devices()[:1], timeout_seconds=timeout_seconds, sharding=sharding)
