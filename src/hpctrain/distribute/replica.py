"""One spawned replica: ``python -m hpctrain.distribute.replica FOLDER RANK PARENT_PID`` (see :mod:`spawn`).

A replica dies with the process that spawned it: the kernel sends it SIGKILL when the parent
dies (Linux's parent-death signal), and a watch thread checks the parent's pid every half second
where that signal is not available or the parent died before it was set.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import pickle
import signal
import sys
import threading
import time
import traceback

import torch

from hpctrain.distribute.runtime import GroupSpec, join_group, mark_failed
from hpctrain.distribute.spawn import SharedArray
from hpctrain.hardware import make_plan


def _attached(value):
    return torch.from_numpy(value.attach()) if isinstance(value, SharedArray) else value


def _group_spec(rank: int, replicas: int, port: int) -> GroupSpec:
    return GroupSpec(rank=rank, world_size=replicas, local_rank=rank, local_world_size=replicas,
                     master_addr="127.0.0.1", master_port=port, launcher="local spawn")


def _replica_plan(rank: int, device: torch.device, replicas: int, port: int, timeout_seconds: float,
                  sharding: str | None = None):
    spec = _group_spec(rank, replicas, port)
    communicator = join_group(spec, device, timeout_seconds, sharding)  # NCCL for a GPU, gloo for the CPU
    base = make_plan(device=device)
    threads = max(1, base.threads // replicas)
    plan = dataclasses.replace(base, world_size=replicas, rank=rank, communicator=communicator, threads=threads,
                               tune_threads=False)
    plan = plan.with_choice("threads", threads, f"the physical cores shared by {replicas} local replicas")
    if sharding == "fsdp":
        from hpctrain.distribute.fsdp import plan_for_sharding

        plan = plan_for_sharding(plan)
    return plan.with_choice("world_size", replicas, f"rank {rank} of {replicas} processes spawned at fit")


class _ModelsOwnMethods:
    """Without a front end's helper: the model itself takes its plan and reports its optimizer."""

    def use_plan(self, model, plan) -> None:
        model.use_plan(plan)

    def optimizer_state(self, model) -> list:
        optimizer = getattr(model, "optimizer", None)
        return optimizer.state_by_position() if hasattr(optimizer, "state_by_position") else []


def main(folder: str, rank: int) -> None:
    with open(os.path.join(folder, "job.pickle"), "rb") as f:
        job = pickle.load(f)
    arguments = {key: _attached(value) for key, value in job["arguments"].items()}
    if isinstance(arguments.get("validation_data"), tuple):
        arguments["validation_data"] = tuple(_attached(part) for part in arguments["validation_data"])
    model = job["model"]
    torch.set_rng_state(job["rng_state"])
    device = torch.device(job["devices"][rank])
    strategy = job["strategy"]  # the strategy its compile recorded
    front = job.get("front") or _ModelsOwnMethods()
    if strategy is None:
        front.use_plan(model, _replica_plan(rank, device, job["replicas"], job["port"], job["timeout_seconds"],
                                            job.get("sharding")))
    else:
        strategy.join_spawned_group(_group_spec(rank, job["replicas"], job["port"]))
        if hasattr(front, "join_stage"):
            front.join_stage(model, strategy)
    history = model.fit(**arguments)
    # A pipeline's stages each hold part of the optimizer state: gathered by all, written by rank 0
    # (a front end whose fit gathers it into the model itself reads it from there).
    optimizer_state = (front.optimizer_state(model) if strategy is None or hasattr(front, "join_stage")
                       else strategy.optimizer_state_by_position())
    if rank == 0:
        result = os.path.join(folder, "result.pickle")
        with open(result + ".tmp", "wb") as f:
            pickle.dump((model.get_weights(), history.history, history.epoch, history.params, torch.get_rng_state(),
                         optimizer_state, None), f)
        os.replace(result + ".tmp", result)


_PR_SET_PDEATHSIG = 1
_PARENT_CHECK_SECONDS = 0.5


def die_with_parent(parent_pid: int) -> None:
    """Exit as soon as ``parent_pid`` is no longer this process's parent (it died: the orphan was
    handed to another process)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl here: the watch thread alone
    if os.getppid() != parent_pid:  # died before the signal was set
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_CHECK_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="hpctrain-parent-watch", daemon=True).start()


def error_report(exc: BaseException) -> str:
    """What the parent reads back: when, which error (type and message, to raise it again there), and where."""
    kind = {"type": type(exc).__name__, "module": type(exc).__module__, "message": str(exc)}
    return f"{time.time()}\n{json.dumps(kind)}\n{traceback.format_exc()}"


if __name__ == "__main__":
    folder, rank = sys.argv[1], int(sys.argv[2])
    if len(sys.argv) > 3:
        die_with_parent(int(sys.argv[3]))
    try:
        main(folder, rank)
    except BaseException as exc:
        with open(os.path.join(folder, f"rank{rank}.error"), "w") as f:
            f.write(error_report(exc))
        mark_failed()
        sys.exit(1)
