"""The static step's loop in C++: ``step_loop.cpp``, built once per machine and cached.

Per step of a small MLP the static executor makes ~13 ATen calls and one fused update; from
Python each call costs 1-2 us of interpreter time and argument parsing on top of its kernel,
a fifth of the seed step. ``step_loop.cpp`` runs the same calls, in the same order with the same
arguments, for a run of batches per call from Python (bit-identical weights: tested); two of them,
the Adam update and the non-finite check, are kernels of its own with the same results (the update
flushes subnormals; see the file).

The library is compiled with the system's C++ compiler against the installed PyTorch (~10 s),
in an idle-priority process of its own started when the first fit that could use it ends (that
fit trains on the Python loop); later fits and runs take it from the cache. No compiler, a failed build or
``HPCTRAIN_NATIVE=0``: the Python loop, always available, and ``hpctrain doctor`` says why.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import json
import threading
import time

import torch

from hpctrain.engine.native import compile_job

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "step_loop.cpp")
_LIBRARY_NAME = "step_loop.so"
_STALE_LOCK_SECONDS = 600  # a build left unfinished by a killed process is retried after this

_lock = threading.Lock()
_state = {"op": None, "error": None}


def enabled() -> bool:
    return os.environ.get("HPCTRAIN_NATIVE", "1") != "0" and sys.platform.startswith("linux")


def native_dir() -> str:
    """``$HPCTRAIN_NATIVE_DIR``, else ``native/`` in hpctrain's cache directory."""
    from hpctrain.hardware.plan_cache import cache_dir

    return os.environ.get("HPCTRAIN_NATIVE_DIR") or os.path.join(cache_dir(), "native")


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def library_path() -> str:
    """Where the build for this source, PyTorch, Python and compiler lives."""
    return os.path.join(native_dir(), _build_key(compiler()), _LIBRARY_NAME)


@functools.cache
def _build_key(compiler_path: str | None) -> str:
    with open(SOURCE, "rb") as f:
        source = f.read()
    return hashlib.sha256(source + f"{torch.__version__}|{sys.version}|{compiler_path}".encode()).hexdigest()[:16]


def step_loop():
    """``torch.ops.hpctrain_native.run_steps`` where built (loaded on first use), else ``None``."""
    if not enabled() or _state["error"]:
        return None
    op = _state["op"]
    if op is not None:
        return op
    try:
        path = library_path()
        return _load(path) if os.path.exists(path) else None
    except OSError as error:
        _state["error"] = f"cannot read {native_dir()}: {error}"
        return None


def build_in_background() -> None:
    """Starts the build in a process of its own unless the library is there, being built, failed
    before, or cannot be built here. Called when a fit that could have used it ends: started
    while training, even an idle-priority compiler slowed a two-thread fit severalfold."""
    if not enabled() or _state["error"] or compiler() is None:
        return
    try:
        path = library_path()
        if not os.path.exists(path):
            _start_build(path)
    except OSError as error:  # an unwritable cache directory, say: training goes on in Python
        _state["error"] = f"cannot build in {native_dir()}: {error}"


def build(timeout: float = 300.0) -> bool:
    """Builds (or waits for the running build) and loads the library; False with :func:`status`
    saying why where it cannot be had."""
    if not enabled() or compiler() is None:
        return False
    path = library_path()
    if not os.path.exists(path):
        try:
            os.unlink(_failure_path(path))  # asked for explicitly: an earlier failure is retried
        except OSError:
            pass
        try:
            if _claim(path):
                compile_job.compile_library(_compile_command(), path, _lock_path(path), _failure_path(path))
        except OSError as error:
            _state["error"] = f"cannot build in {native_dir()}: {error}"
            return False
        deadline = time.monotonic() + timeout
        while not os.path.exists(path) and os.path.exists(_lock_path(path)) and time.monotonic() < deadline:
            time.sleep(0.2)  # another process is building it
    return os.path.exists(path) and _load(path) is not None


def status() -> str:
    """One line for ``hpctrain doctor`` and ``plan.explain()``."""
    if not enabled():
        return "off (HPCTRAIN_NATIVE=0)" if sys.platform.startswith("linux") else "off (Linux only)"
    if _state["op"] is not None:
        return "C++ step loop loaded"
    if _state["error"]:
        return f"C++ step loop unavailable: {_state['error']}"
    if compiler() is None:
        return "C++ step loop unavailable: no C++ compiler (install g++, or set CXX); the Python loop runs"
    path = library_path()
    if os.path.exists(path):
        return "C++ step loop built, loaded at the first fit that uses it"
    failed = _failure_path(path)
    if os.path.exists(failed):
        with open(failed) as f:
            last_line = (f.read().strip().splitlines() or ["no message"])[-1]
        return f"C++ step loop build failed (see {failed}): {last_line}; the Python loop runs"
    if os.path.exists(_lock_path(path)):
        return "C++ step loop being built in the background; the Python loop runs meanwhile"
    return "C++ step loop not built yet: built in the background when a fit that can use it ends"


def _load(path: str):
    with _lock:
        if _state["op"] is None:
            try:
                torch.ops.load_library(path)
                _state["op"] = torch.ops.hpctrain_native.run_steps
            except (OSError, RuntimeError) as error:  # not retried in this process
                _state["error"] = f"could not load {path}: {error}"
                return None
        return _state["op"]


def _lock_path(path: str) -> str:
    return path + ".building"


def _failure_path(path: str) -> str:
    return path + ".failed"


def _start_build(path: str) -> None:
    """Starts the build in a process of its own, which outlives this one if it has to."""
    with _lock:
        if os.path.exists(_failure_path(path)) or not _claim(path):
            return
        spec = json.dumps({"command": _compile_command(), "output": path, "lock": _lock_path(path),
                           "failure": _failure_path(path)})
        subprocess.Popen([sys.executable, compile_job.__file__, spec], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _claim(path: str) -> bool:
    """Takes the build lock, a file, so that concurrent processes build once."""
    lock = _lock_path(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        if time.time() - os.path.getmtime(lock) > _STALE_LOCK_SECONDS:
            os.unlink(lock)
    except OSError:
        pass
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _compile_command() -> list[str]:
    """The compiler's command line; ``{output}`` stands for the library's path."""
    from torch.utils.cpp_extension import include_paths, library_paths

    libraries = library_paths()[0]
    return [compiler(), "-O2", "-ffp-contract=off", "-fopenmp", "-std=c++17", "-shared", "-fPIC", "-w",
            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            *(f"-I{folder}" for folder in include_paths()), SOURCE, "-o", "{output}",
            f"-L{libraries}", "-lc10", "-ltorch_cpu", "-ltorch", f"-Wl,-rpath,{libraries}"]
