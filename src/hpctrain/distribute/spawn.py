"""Local spawn: a plain ``python script.py`` whose strategy has several replicas starts them at
``fit``, trains, and brings the weights and the ``History`` back into the calling process's model.

Each replica is a fresh interpreter running ``python -m hpctrain.distribute.replica`` (the user's
script is not re-executed, so it needs no ``if __name__ == "__main__"`` guard). The training
arrays are copied once into named shared memory that every replica maps (no copy per replica);
the model and the fit arguments travel pickled. A replica that raises or dies stops the others
at once and its rank and error are reported; an hpctrain error (a bad input, a non-finite loss)
is raised again here with its own type and message.

Nothing outlives the run: the replicas die with this process (see :mod:`replica`); the job folder
and the shared-memory blocks, both named after this process's pid, are released on every exit,
SIGTERM included, and those of a process that was killed outright are removed at the next start.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
from multiprocessing import resource_tracker, shared_memory

import numpy as np
import torch

from hpctrain import errors
from hpctrain.engine.callbacks import History
from hpctrain.engine.data import as_numeric
from hpctrain.engine.folder_lock import process_alive
from hpctrain.errors import ConfigError, ReplicaFailed

_POLL_SECONDS = 0.05
_SETTLE_SECONDS = 0.5


class SharedArray:
    """A NumPy array in named shared memory, picklable as its name, shape and dtype."""

    def __init__(self, array: np.ndarray):
        array = np.ascontiguousarray(array)
        self.shape, self.dtype = array.shape, array.dtype.str
        name = f"{BLOCK_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"  # whose it is, for a later start to tidy
        self.block = shared_memory.SharedMemory(name=name, create=True, size=max(1, array.nbytes))
        np.ndarray(array.shape, dtype=array.dtype, buffer=self.block.buf)[...] = array
        self.name = self.block.name

    def __getstate__(self):
        return {"name": self.name, "shape": self.shape, "dtype": self.dtype}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.block = None

    def attach(self) -> np.ndarray:
        """In a replica: the array, mapped from shared memory without a copy."""
        self.block = _attach_untracked(self.name)
        return np.ndarray(self.shape, dtype=self.dtype, buffer=self.block.buf)

    def release(self) -> None:
        self.block.close()
        self.block.unlink()


def _attach_untracked(name: str) -> shared_memory.SharedMemory:
    """Attach without letting this process's resource tracker unlink the block at exit: the
    parent owns it (Python before 3.13 tracks every attachment; 3.13 added ``track=False``)."""
    try:
        return shared_memory.SharedMemory(name=name, track=False)
    except TypeError:
        block = shared_memory.SharedMemory(name=name)
        resource_tracker.unregister(block._name, "shared_memory")
        return block


BLOCK_PREFIX, FOLDER_PREFIX = "hpctrain-", "hpctrain-replicas-"
_SHARED_MEMORY_DIR = "/dev/shm"


def remove_stale_leftovers(temporary: str | None = None) -> None:
    """Job folders and shared-memory blocks of spawning processes that are gone (killed outright,
    so that nothing of theirs ran to release them)."""
    temporary = temporary or tempfile.gettempdir()
    for directory, prefix in ((temporary, FOLDER_PREFIX), (_SHARED_MEMORY_DIR, BLOCK_PREFIX)):
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            owner = re.match(rf"{re.escape(prefix)}(\d+)-", name)
            if owner is None or process_alive(int(owner.group(1))):
                continue
            path = os.path.join(directory, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.remove(path)


@contextlib.contextmanager
def _released_on_sigterm():
    """SIGTERM raises SystemExit here while the replicas run, so every ``finally`` releases what it
    holds (Python's default for SIGTERM ends the process without running any)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def free_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _share(value, blocks: list, name: str):
    if value is None:
        return value
    if isinstance(value, torch.utils.data.DataLoader):
        raise ConfigError("spawned replicas take arrays or tensors; a DataLoader would give each replica every "
                          "batch. Pass the arrays, or start the script with hpctrain launch.")
    numeric = as_numeric(value, name=name)  # the same checks, and errors, as a single process
    array = numeric.cpu().numpy() if isinstance(numeric, torch.Tensor) else numeric
    _check_shared_memory_room(array.nbytes)
    blocks.append(SharedArray(array))
    return blocks[-1]


def _check_shared_memory_room(needed: int) -> None:
    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:  # no /dev/shm to measure: let the allocation speak for itself
        return
    if needed > free:
        raise ConfigError(
            f"the training data needs {needed / 2**20:.0f} MiB of shared memory but /dev/shm has "
            f"{free / 2**20:.0f} MiB free; enlarge it (e.g. docker run --shm-size=…) or start the script with "
            "hpctrain launch, where each replica loads its own data."
        )


def fit_in_replicas(model, devices: list, timeout_seconds: float, fit_arguments: dict, strategy=None,
                    front=None) -> History:
    """Train ``model`` in one fresh process per device; load rank 0's weights and History into it.

    ``strategy``: one that lays out each process's part itself (a pipeline's stages); without one,
    each process is a data-parallel replica. ``front``: the front end's picklable helper that knows
    its models (``use_plan(model, plan)``, ``optimizer_state(model)``,
    ``load_optimizer_state(model, state)``); distribute itself knows only modules.
    """
    remove_stale_leftovers()
    with _released_on_sigterm():
        weights, history_dict, epochs, params, rng_state, optimizer_state, clock = _train_in_replicas(
            model, devices, timeout_seconds, dict(fit_arguments), strategy, front)
    model.set_weights(weights)
    if front is not None:
        front.load_optimizer_state(model, optimizer_state)  # a later fit continues Adam's moments
    elif hasattr(getattr(model, "optimizer", None), "load_state_by_position"):
        model.optimizer.load_state_by_position(optimizer_state)  # a later fit continues Adam's moments
    torch.set_rng_state(rng_state)  # the next fit shuffles on, as it would after training here
    history = History()
    history.set_model(model)
    history.set_params(params)
    history.history, history.epoch = history_dict, epochs
    return history


def _train_in_replicas(model, devices, timeout_seconds, arguments: dict, strategy, front) -> tuple:
    """Rank 0's result: weights, History's dict, epochs, params, RNG state, optimizer state, clock.
    The shared blocks and the job folder are released however this ends."""
    replicas = len(devices)
    blocks: list[SharedArray] = []
    try:
        arguments["x"], arguments["y"] = _share(arguments["x"], blocks, "x"), _share(arguments.get("y"), blocks, "y")
        if isinstance(arguments.get("validation_data"), (tuple, list)):
            arguments["validation_data"] = tuple(_share(part, blocks, name) for part, name in
                                                 zip(arguments["validation_data"], ("x_val", "y_val", "weights")))
        with tempfile.TemporaryDirectory(prefix=f"{FOLDER_PREFIX}{os.getpid()}-") as folder:
            # The replicas continue this process's torch RNG: the same shuffle order and dropout masks
            # as training here would draw.
            # The front end first: unpickling it sets up what the model's own unpickling needs (the
            # Keras seam, whose compile marks the model for the engine).
            job = {"front": front, "model": model, "arguments": arguments, "devices": [str(d) for d in devices],
                   "replicas": replicas, "port": free_local_port(),
                   "timeout_seconds": timeout_seconds, "folder": folder, "rng_state": torch.get_rng_state(),
                   "strategy": strategy}
            with open(os.path.join(folder, "job.pickle"), "wb") as f:
                f.write(_pickled_job(job))
            _run_and_watch(folder, replicas)
            with open(os.path.join(folder, "result.pickle"), "rb") as f:
                return pickle.load(f)
    finally:
        for block in blocks:
            block.release()


def _run_and_watch(folder: str, replicas: int) -> None:
    processes = [subprocess.Popen([sys.executable, "-m", "hpctrain.distribute.replica", folder, str(rank),
                                   str(os.getpid())]) for rank in range(replicas)]
    try:
        while any(p.poll() is None for p in processes):
            if any(p.poll() not in (None, 0) for p in processes):
                break
            time.sleep(_POLL_SECONDS)
        if any(p.poll() not in (None, 0) for p in processes):
            time.sleep(_SETTLE_SECONDS)  # let the others notice, so the first failure can be told apart
            failed = _first_failure(folder, processes)
            _raise_failure(folder, failed, processes[failed].returncode)
    finally:
        for process in processes:  # a failure stops every other replica at once
            if process.poll() is None:
                process.kill()
                process.wait()


def _first_failure(folder: str, processes) -> int:
    """The replica that failed first: one killed outright, else the earliest recorded error.

    When one replica fails, the others fail too, in their next collective ("connection closed
    by peer"); the cause is the first one.
    """
    failed = [rank for rank, p in enumerate(processes) if p.poll() not in (None, 0)]
    killed = [rank for rank in failed if processes[rank].returncode < 0
              and not os.path.exists(os.path.join(folder, f"rank{rank}.error"))]
    if killed:
        return killed[0]
    return min(failed, key=lambda rank: _error_time(folder, rank))


def _error_time(folder: str, rank: int) -> float:
    try:
        with open(os.path.join(folder, f"rank{rank}.error")) as f:
            return float(f.readline())
    except (OSError, ValueError):
        return float("inf")


class _ScriptDefinitionFinder(pickle.Pickler):
    """A pickler noting the classes and functions it meets that the running script defines itself."""

    def __init__(self, file):
        super().__init__(file)
        self.found: list[str] = []

    def reducer_override(self, obj):
        if isinstance(obj, (type, types.FunctionType)) and getattr(obj, "__module__", None) == "__main__":
            self.found.append(obj.__qualname__)
        return NotImplemented  # pickled as usual


def _pickled_job(job: dict) -> bytes:
    """The replicas' job as pickle bytes; refused before any replica starts if it holds a class or
    function defined in the script itself: the replicas do not run the script, so they could not
    rebuild it (they would fail one by one with a bare unpickling error)."""
    buffer = io.BytesIO()
    finder = _ScriptDefinitionFinder(buffer)
    try:
        finder.dump(job)
    except (pickle.PicklingError, AttributeError, TypeError) as error:
        if not finder.found:
            raise ConfigError(f"the model, its callbacks or fit's arguments cannot be sent to the spawned replicas "
                              f"({error}); start the script once per replica with hpctrain launch instead.") from error
    if finder.found:
        names = ", ".join(sorted(set(finder.found)))
        raise ConfigError(f"{names} is defined in the script itself; spawned replicas do not run the script, so they "
                          "cannot rebuild it. Move it into a module beside the script and import it from there, or "
                          "start the script once per replica: hpctrain launch --nproc-per-node N script.py.")
    return buffer.getvalue()


def _raise_failure(folder: str, rank: int, returncode: int) -> None:
    """An hpctrain error the replica raised, as itself (the replica's report as its cause); anything
    else as :class:`ReplicaFailed`."""
    error_file = os.path.join(folder, f"rank{rank}.error")
    if not os.path.exists(error_file):
        how = f"signal {signal.Signals(-returncode).name}" if returncode < 0 else f"exit code {returncode}"
        raise ReplicaFailed(f"replica rank {rank} of the spawned group died ({how}), so training stopped.")
    with open(error_file) as f:
        f.readline()  # the time it failed
        kind = _error_kind(f.readline())
        failure = ReplicaFailed(f"replica rank {rank} of the spawned group raised, so training stopped:\n{f.read()}")
    error_type = getattr(errors, kind.get("type", ""), None) if kind.get("module") == errors.__name__ else None
    if (isinstance(error_type, type) and issubclass(error_type, errors.HpctrainError)
            and error_type is not ReplicaFailed):
        raise error_type(kind["message"]) from failure
    raise failure


def _error_kind(line: str) -> dict:
    try:
        kind = json.loads(line)
    except ValueError:
        return {}
    return kind if isinstance(kind, dict) else {}
