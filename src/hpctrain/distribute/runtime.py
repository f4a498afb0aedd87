"""Joining the process group from what the launcher put in the environment (torchrun, Slurm, MPI).

Environment variables are read here and nowhere else; the result is a :class:`Communicator`
that the plan carries down to the engine.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import os
import sys
from collections.abc import Mapping

import torch
import torch.distributed as dist

from hpctrain.distribute.communicator import Communicator
from hpctrain.errors import ConfigError, warn_only_on_rank_zero
from hpctrain.hardware.launcher import LauncherInfo, detect_launcher

DEFAULT_TIMEOUT_SECONDS = 300.0


@dataclasses.dataclass(frozen=True)
class GroupSpec:
    """Where this process sits in the group and where to meet the others."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    launcher: str


def group_spec_from_environment(env: Mapping[str, str] | None = None) -> GroupSpec | None:
    """The group this process was launched into, or ``None`` when it was started on its own."""
    env = os.environ if env is None else env
    launcher = detect_launcher(env)
    if launcher.name == "none" or not launcher.world_size or launcher.world_size < 2:
        return None
    if launcher.name == "slurm" and "SLURM_PROCID" not in env:
        return None  # inside an allocation but not a task srun started: this process is on its own
    _reject_problems(launcher)
    missing = [key for key in ("MASTER_ADDR", "MASTER_PORT") if key not in env]
    if missing:
        raise ConfigError(
            f"started by {launcher.name} as rank {launcher.rank} of {launcher.world_size}, but "
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: export MASTER_ADDR (the host "
            "of rank 0) and MASTER_PORT (a free port there) in the job script, or start with hpctrain launch."
        )
    local_world = _local_world_size(env, launcher)
    return GroupSpec(rank=launcher.rank, world_size=launcher.world_size,
                     local_rank=launcher.local_rank if launcher.local_rank is not None else 0,
                     local_world_size=local_world, master_addr=env["MASTER_ADDR"],
                     master_port=int(env["MASTER_PORT"]), launcher=launcher.name)


def _local_world_size(env: Mapping[str, str], launcher: LauncherInfo) -> int:
    for key in ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE", "MPI_LOCALNRANKS"):
        if env.get(key, "").isdigit():
            return int(env[key])
    return 1


def _reject_problems(launcher: LauncherInfo) -> None:
    if launcher.problems:
        raise ConfigError(f"the {launcher.name} environment is malformed: {'; '.join(launcher.problems)}.")


def join_group(spec: GroupSpec, device: torch.device, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
               sharding: str | None = None) -> Communicator:
    """Initialise ``torch.distributed`` (once per process): NCCL for GPUs, gloo for CPUs.
    ``sharding``: the communicator's (see :class:`Communicator`)."""
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)  # else every replica also opens a context on GPU 0
        address = f"tcp://{spec.master_addr}:{spec.master_port}"
        try:
            timeout = datetime.timedelta(seconds=timeout_seconds)
            dist.init_process_group(backend, store=_attempt_store(address, spec, timeout), rank=spec.rank,
                                    world_size=spec.world_size, timeout=timeout)
        except (RuntimeError, ValueError) as exc:  # DistStoreError is a RuntimeError
            raise ConfigError(
                f"rank {spec.rank} could not join the process group at {address} within {timeout_seconds:.0f} s "
                f"({exc}). Check that rank 0 is running and that this address is reachable."
            ) from exc
        warn_only_on_rank_zero(spec.rank)
        # Left to interpreter shutdown, the backend's threads can abort the process on exit.
        atexit.register(_leave_group)
        _watch_for_uncaught_exceptions()
    return Communicator(spec.rank, spec.world_size, spec.local_world_size, device, sharding=sharding)


def _attempt_store(address: str, spec: GroupSpec, timeout: datetime.timedelta):
    """The rendezvous store, its keys under this attempt's own prefix.

    torchrun keeps one store across ``--max-restarts``: without a prefix per attempt, the workers
    of a restarted group would read the keys of the group that died and wait on dead peers.
    """
    from torch.distributed.rendezvous import rendezvous

    store, _, _ = next(rendezvous(f"{address}?rank={spec.rank}&world_size={spec.world_size}", timeout=timeout))
    return dist.PrefixStore(f"attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


_failed = False
EXIT_BARRIER_SECONDS = 30


def mark_failed() -> None:
    """This process is exiting on an error: leave without waiting for the peers."""
    global _failed
    _failed = True


def _watch_for_uncaught_exceptions() -> None:
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        mark_failed()
        previous(exc_type, exc, tb)

    sys.excepthook = hook


def _leave_group() -> None:
    if not dist.is_initialized():
        return
    if not _failed:
        try:
            # Leave together: a rank that tears its connections down while a peer is still
            # shutting down its own can make the backend abort that peer. A failed rank must not
            # wait: its peers are stuck in a collective it will never join.
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=EXIT_BARRIER_SECONDS))
            else:
                dist.barrier()
        except RuntimeError:  # a peer is gone already; nothing to wait for
            pass
    dist.destroy_process_group()
