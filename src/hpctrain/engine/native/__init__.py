"""The static step's loop in C++: ``step_loop.cpp``, built once per machine and cached.

Per step of a small MLP the static executor makes ~13 ATen calls and one fused update; from
Python each call costs 1-2 us of interpreter time and argument parsing on top of its kernel,
a fifth of the seed step. ``step_loop.cpp`` runs the same calls, in the same order with the same
arguments, for a run of batches per call from Python (bit-identical weights: tested); two of them,
the Adam update and the non-finite check, are kernels of its own with the same results (the update
flushes subnormals; see the file). ``pooling.cpp``, built into the same library, holds kernels
the autograd path calls where they are faster than ATen's (:func:`kernels`).

It is built by ``torch.utils.cpp_extension.load`` (the compiler flags and ABI of the installed
PyTorch, its lock and its rebuild-when-changed) into ``native/`` in hpctrain's cache directory, in
an idle-priority process of its own started when the first fit that could use it ends (that fit
trains on the Python loop); later fits and runs load it from there. Where it cannot be built (a CPU
other than x86-64, no C++ compiler or ninja, a failed build) hpctrain says so once, in a
:class:`StepLoopUnavailable` warning, and trains on the Python executors; ``HPCTRAIN_NATIVE=0``
turns it off silently. ``hpctrain doctor`` says which.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import warnings
import weakref

import torch

from hpctrain.engine.native import code as _code, compile_job

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "step_loop.cpp")
SOURCES = [SOURCE, os.path.join(os.path.dirname(SOURCE), "pooling.cpp")]
HEADER = "step_loop_opcodes.h"  # code.py's tables as C++, written into the build directory
NAME = "hpctrain_step_loop"
# Its AVX-512 kernels are built for any x86-64 CPU and run where ATen runs its AVX-512 build.
EXTRA_CFLAGS = ["-O2", "-ffp-contract=off", "-fopenmp", "-w"]  # fusing is explicit there: see the file
EXTRA_LDFLAGS = ["-fopenmp"]

_lock = threading.Lock()
_state = {"op": None, "error": None, "warned": False, "looked": False, "asked": False}


class StepLoopUnavailable(UserWarning):
    """The C++ step loop cannot be built or loaded here; training runs on the Python executors."""


def enabled() -> bool:
    return os.environ.get("HPCTRAIN_NATIVE", "1") != "0" and sys.platform.startswith("linux")


def native_dir() -> str:
    """``$HPCTRAIN_NATIVE_DIR``, else ``native/`` in hpctrain's cache directory."""
    from hpctrain.hardware.plan_cache import cache_dir

    return os.environ.get("HPCTRAIN_NATIVE_DIR") or os.path.join(cache_dir(), "native")


def build_dir() -> str:
    """Where ``cpp_extension`` builds for this Python and PyTorch (and keeps its lock)."""
    return os.path.join(native_dir(), f"{sys.implementation.cache_tag}-torch{torch.__version__}")


def library_path() -> str:
    return os.path.join(build_dir(), NAME + ".so")


def compiler() -> str | None:
    """The C++ compiler ``cpp_extension`` would run (``$CXX``, else ``c++``), where it is found."""
    return shutil.which(os.environ.get("CXX") or "c++")


def unavailable_reason() -> str | None:
    """Why this machine cannot build the loop at all, or ``None``."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return f"it is written for x86-64 CPUs and this one is {machine or 'unknown'}"
    if compiler() is None:
        return f"no C++ compiler ({os.environ.get('CXX') or 'c++'} not found; install g++ or set CXX)"
    if _ninja() is None:
        return "PyTorch's extension builder needs ninja, which is not found (pip install ninja)"
    return None


def _ninja() -> str | None:
    """ninja on PATH, else the one ``pip install ninja`` put beside this interpreter (a venv's
    bin folder is not on PATH when its python is run by its path): that folder then joins PATH,
    where cpp_extension (and its build job, which inherits it) looks for ninja."""
    found = shutil.which("ninja")
    beside = os.path.dirname(sys.executable)
    if found is None and shutil.which("ninja", path=beside) is not None:
        os.environ["PATH"] = os.pathsep.join([beside, os.environ.get("PATH", "")])
        found = shutil.which("ninja")
    return found


def step_loop():
    """``torch.ops.hpctrain_native.run_steps`` as a :class:`StepLoop` where built (loaded on first
    use), else ``None``, with a :class:`StepLoopUnavailable` warning, once per process, where it
    cannot be had here."""
    if not enabled():
        return None
    if _state["op"] is None and not _state["error"]:
        _state["error"] = unavailable_reason() or _failure()
        if not _state["error"] and _built():
            _load()
    if _state["error"]:
        _warn_once()
    return _state["op"]


def kernels():
    """``torch.ops.hpctrain_native`` where the library is built (loaded on first use), else ``None``
    and, where it can be built, a build asked for after the fit (:func:`build_if_asked`). No
    warning: a caller has ATen's op to fall back on. Looked for once per process."""
    if not enabled():
        return None
    if _state["op"] is None and not _state["looked"]:
        _state["looked"] = True
        if unavailable_reason() is None and _failure() is None:
            if _built():
                _load()
            else:
                _state["asked"] = True
    return torch.ops.hpctrain_native if _state["op"] is not None else None


def build_if_asked() -> None:
    """The background build, where :func:`kernels` found the library missing; called when a fit
    ends, as for the step loop."""
    if _state["asked"]:
        _state["asked"] = False
        build_in_background()


def build_in_background() -> None:
    """Starts the build in a process of its own unless the library is there, being built, failed
    before, or cannot be built here. Called when a fit that could have used it ends: started
    while training, even an idle-priority compiler slowed a two-thread fit severalfold."""
    if (not enabled() or _state["error"] or unavailable_reason() or _failure()
            or compile_job.build_running(build_dir())):
        return
    try:
        _write_header()
    except OSError as error:  # an unwritable cache directory, say: training goes on in Python
        _state["error"] = f"cannot build in {native_dir()}: {error}"
        return
    spec = json.dumps({"load": _load_arguments(), "failure": _failure_path()})
    subprocess.Popen([sys.executable, compile_job.__file__, spec], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def build() -> bool:
    """Builds (or waits for the build running) and loads the library; False with :func:`status`
    saying why where it cannot be had. An earlier failure is retried."""
    if not enabled():
        return False
    if _state["op"] is not None:
        return True
    reason = unavailable_reason()
    if reason:
        _state["error"] = reason
        return False
    try:
        os.unlink(_failure_path())
    except OSError:
        pass
    _state["error"] = None
    try:
        _write_header()
    except OSError as error:
        _state["error"] = f"cannot build in {native_dir()}: {error}"
        return False
    with _lock:
        if compile_job.load_or_record_failure(_load_arguments(), _failure_path()):
            _state["op"] = StepLoop(torch.ops.hpctrain_native.run_steps)
        else:
            _state["error"] = _failure() or "build failed"
    return _state["op"] is not None


def status() -> str:
    """One line for ``hpctrain doctor`` and ``plan.explain()``."""
    if not enabled():
        return "off (HPCTRAIN_NATIVE=0)" if sys.platform.startswith("linux") else "off (Linux only)"
    if _state["op"] is not None:
        return "C++ step loop loaded"
    reason = _state["error"] or unavailable_reason()
    if reason and reason.startswith("build failed"):
        return f"C++ step loop {reason}; the Python loop runs"
    if reason:
        return f"C++ step loop unavailable: {reason}; the Python loop runs"
    failure = _failure()
    if failure:
        return f"C++ step loop {failure}; the Python loop runs"
    if compile_job.build_running(build_dir()):
        return "C++ step loop being built in the background; the Python loop runs meanwhile"
    if os.path.exists(library_path()):
        return ("C++ step loop built, loaded at the first fit that uses it" if _built() else
                "C++ step loop out of date (a new source or PyTorch): rebuilt in the background when a fit that can "
                "use it ends")
    return "C++ step loop not built yet: built in the background when a fit that can use it ends"


class StepLoop:
    """``run_steps`` with its parameters besides the program and batches bound once per update and
    guard: the ``StepState`` of ``step_loop.cpp``, passed as one list of tensors, the length of each
    group in it and the numbers."""

    GROUPS = ("params", "grads", "exp_avgs", "exp_avg_sqs", "steps", "counters")  # of the update, then checked

    def __init__(self, op):
        self._op = op
        self._states = weakref.WeakKeyDictionary()  # update -> (guard, check_handed, checked, StepState)

    def state(self, update, guard, *, check_handed: bool, checked: list[torch.Tensor]) -> StepState:
        """The ``StepState`` for the fused Adam ``update`` (engine/optim.py) and non-finite ``guard``
        (engine/guard.py); its hyperparameters read again from the optimizer on every call."""
        bound = self._states.get(update)
        if bound is None or bound[0] is not guard or bound[1] != check_handed or bound[2] != [id(t) for t in checked]:
            groups = [list(getattr(update, name)) for name in self.GROUPS] + [list(checked)]
            tensors = [t for group in groups for t in group] + [guard.found_inf, guard.one, guard.bad_steps]
            state = StepState(tensors, [len(group) for group in groups], check_handed)
            bound = self._states[update] = (guard, check_handed, [id(t) for t in checked], state)
        group = update.optimizer.param_groups[0]
        # Keras's Adam: the loop rescales its base epsilon each step (the Python loop sets group["eps"]).
        keras_epsilon = getattr(update.optimizer, "keras_epsilon", None)
        eps = group["eps"] if keras_epsilon is None else keras_epsilon
        bound[3].set_hyperparameters(float(group["lr"]), *group["betas"], group["weight_decay"], eps,
                                     update.decoupled, keras_epsilon is not None)
        return bound[3]

    def __call__(self, program, x, y, logits, sizes, state: StepState) -> list[torch.Tensor]:
        """Steps on ``sizes[k]`` rows at a time of ``x`` (``y``, ``logits``) by ``program``
        (a :class:`~hpctrain.engine.native.code.NativeCode`); returns the gradients last handed
        to the update."""
        return self._op(program.table, program.code, x, y, logits, sizes, state.tensors, state.lengths,
                        state.numbers)


class StepState:
    """``run_steps``'s ``StepState`` as it travels: ``tensors`` (the groups of
    :attr:`StepLoop.GROUPS`, the checked gradients, then the guard's flag, one and bad-step count),
    ``lengths`` (of each group) and ``numbers`` (lr, beta1, beta2, weight_decay, eps, decoupled,
    check_handed, keras_epsilon)."""

    __slots__ = ("tensors", "lengths", "numbers", "_check_handed", "_hyperparameters")

    def __init__(self, tensors: list[torch.Tensor], lengths: list[int], check_handed: bool):
        self.tensors, self.lengths, self._check_handed = tensors, lengths, check_handed
        self._hyperparameters = self.numbers = None

    def set_hyperparameters(self, lr: float, beta1: float, beta2: float, weight_decay: float, eps: float,
                            decoupled: bool, keras_epsilon: bool = False) -> None:
        hyperparameters = (lr, beta1, beta2, weight_decay, eps, decoupled, keras_epsilon)
        if hyperparameters != self._hyperparameters:  # a callback changed the learning rate, say
            self._hyperparameters = hyperparameters
            self.numbers = [lr, beta1, beta2, weight_decay, eps, float(decoupled), float(self._check_handed),
                            float(keras_epsilon)]


def _warn_once() -> None:
    if not _state["warned"]:
        _state["warned"] = True
        warnings.warn(f"hpctrain: the C++ step loop cannot be used here: {_state['error']}. Training runs on the "
                      "Python executors (slower).", StepLoopUnavailable, stacklevel=3)


def _load():
    with _lock:
        if _state["op"] is None:
            try:  # as cpp_extension.load loads it, without importing cpp_extension (~0.5 s) where built
                torch.ops.load_library(library_path())
                _state["op"] = StepLoop(torch.ops.hpctrain_native.run_steps)
            except (OSError, RuntimeError, AttributeError) as error:  # not retried in this process
                last_line = (str(error).strip().splitlines() or ["no message"])[-1]
                _state["error"] = f"could not load {library_path()}: {last_line}"
                return None
        return _state["op"]


def _built() -> bool:
    """Whether the library is there, no build is running and it is up to date (``ninja -n``
    finds nothing to do: a new source or table, or a new PyTorch's headers, would rebuild it, and
    that is left to the background build, not done inside a fit)."""
    try:
        if not os.path.exists(library_path()) or compile_job.build_running(build_dir()):
            return False
        _write_header()
        result = subprocess.run([_ninja(), "-n", "-C", build_dir()], capture_output=True, text=True,
                                timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        _state["error"] = f"cannot read {native_dir()}: {error}"
        return False
    return result.returncode == 0 and "no work to do" in result.stdout


def _write_header() -> None:
    """``code.py``'s tables as the header ``step_loop.cpp`` includes, rewritten only where they
    changed (a newer file makes ninja rebuild)."""
    path = os.path.join(build_dir(), HEADER)
    text = _code.cpp_header()
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except OSError:
        pass
    os.makedirs(build_dir(), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def _load_arguments() -> dict:
    """``torch.utils.cpp_extension.load``'s arguments."""
    return dict(name=NAME, sources=SOURCES, extra_cflags=EXTRA_CFLAGS, extra_ldflags=EXTRA_LDFLAGS,
                extra_include_paths=[build_dir()], build_directory=build_dir(), is_python_module=False,
                verbose=False)


def _failure_path() -> str:
    return os.path.join(build_dir(), "failed")


def _failure() -> str | None:
    """"build failed (see FILE): last line" where the last build failed, else ``None``."""
    path = _failure_path()
    try:
        with open(path) as f:
            last_line = (f.read().strip().splitlines() or ["no message"])[-1]
    except OSError:
        return None
    return f"build failed (see {path}): {last_line}"
