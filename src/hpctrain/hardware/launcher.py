"""Which launcher started this process, read from its environment variables.

``hpctrain doctor`` reports it; ``hpctrain.distribute.runtime`` turns it into the process group.
The engine never reads it: training takes rank and world size from the ``Plan``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True, kw_only=True)
class LauncherInfo:
    name: str  # "torchrun", "mpi", "slurm" or "none"
    rank: int | None
    world_size: int | None
    local_rank: int | None
    variables: tuple[str, ...]  # the variables that identified the launcher, as seen
    problems: tuple[str, ...] = ()  # variables set to something that is not a whole number


NO_LAUNCHER = LauncherInfo(name="none", rank=None, world_size=None, local_rank=None, variables=())

TORCHRUN_VARIABLES = ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
# (rank, world size, local rank) per MPI family: Open MPI, MPICH / Intel MPI (PMI), MVAPICH2.
MPI_VARIABLE_SETS = (
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_RANK"),
)


def detect_launcher(env: Mapping[str, str] | None = None) -> LauncherInfo:
    """The launcher that started this process, or ``NO_LAUNCHER``.

    Launchers nest: torchrun and mpirun are often run inside a Slurm job, and then the inner
    launcher numbers the processes while the Slurm variables describe the job step around it
    (every process started by one mpirun inherits the same SLURM_PROCID). So the innermost wins:
    torchrun, then MPI, then Slurm.
    """
    env = os.environ if env is None else env
    for detect in (_torchrun, _mpi, _slurm):
        found = detect(env)
        if found is not None:
            return found
    return NO_LAUNCHER


def _torchrun(env: Mapping[str, str]) -> LauncherInfo | None:
    # RANK and WORLD_SIZE without TORCHELASTIC_RUN_ID: torch.distributed's env:// convention,
    # set by hand or by a launcher that imitates torchrun; the process group reads them the same way.
    if "TORCHELASTIC_RUN_ID" not in env and not ("RANK" in env and "WORLD_SIZE" in env):
        return None
    return _launcher("torchrun", env, TORCHRUN_VARIABLES, rank="RANK", world_size="WORLD_SIZE", local_rank="LOCAL_RANK")


def _mpi(env: Mapping[str, str]) -> LauncherInfo | None:
    for variables in MPI_VARIABLE_SETS:
        rank, world_size, local_rank = variables
        if rank in env:
            return _launcher("mpi", env, variables, rank=rank, world_size=world_size, local_rank=local_rank)
    return None


def _slurm(env: Mapping[str, str]) -> LauncherInfo | None:
    # SLURM_JOB_ID alone: inside an allocation (a batch script) but not a task started by srun.
    if "SLURM_PROCID" not in env and "SLURM_JOB_ID" not in env:
        return None
    return _launcher(
        "slurm", env, SLURM_VARIABLES, rank="SLURM_PROCID", world_size="SLURM_NTASKS", local_rank="SLURM_LOCALID"
    )


def _launcher(name, env, variables, *, rank, world_size, local_rank) -> LauncherInfo:
    malformed = [key for key in (rank, world_size, local_rank) if key in env and _whole_number(env[key]) is None]
    return LauncherInfo(
        name=name,
        rank=_whole_number(env.get(rank)),
        world_size=_whole_number(env.get(world_size)),
        local_rank=_whole_number(env.get(local_rank)),
        variables=tuple(key for key in variables if key in env),
        problems=tuple(f"{key}={env[key]!r} is not a whole number" for key in malformed),
    )


def _whole_number(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:  # reported through ``problems``; a diagnosis should not stop at the first oddity
        return None
