"""How the C++ step loop is built, and what happens where it cannot be: one warning, and training on
the Python executors with the same results."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import hpctrain
from hpctrain.engine import native
from hpctrain.engine.losses import CrossEntropy
from hpctrain.engine.native import code

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MESSAGE = "the C++ step loop cannot be used here"

# Two fits of Linear, ReLU, Linear with Adam on unshuffled batches, then the same steps by a plain
# PyTorch loop (autograd and torch.optim.Adam): prints the step_loop line of each fit's plan and
# the largest weight difference.
TRAINING = textwrap.dedent("""
    import warnings
    warnings.simplefilter("default")
    import numpy as np, torch, hpctrain
    from hpctrain.engine.losses import CrossEntropy
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 6)).astype("float32"), rng.integers(0, 3, size=64)
    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.ReLU(), torch.nn.Linear(10, 3))
    model = net()
    trainer = hpctrain.Trainer(model, loss=CrossEntropy(sparse=True, from_logits=True), optimizer="adam")
    losses = []
    for _ in range(2):
        losses += trainer.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0).history["loss"]
        print([line for line in trainer.plan.explain().splitlines() if line.startswith("step_loop")][0])
    reference = net()
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3)
    for _ in range(4):
        for first in range(0, 64, 16):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(reference(torch.from_numpy(x[first:first + 16])),
                                              torch.from_numpy(y[first:first + 16])).backward()
            optimizer.step()
    print(max((a - b).abs().max().item() for a, b in zip(model.parameters(), reference.parameters())))
    print(losses[-1] < losses[0])
""")


def _train(env, *, python=sys.executable, cwd=None):
    result = subprocess.run([python, "-c", TRAINING], capture_output=True, text=True, timeout=300, cwd=cwd,
                            env={**os.environ, "HPCTRAIN_NATIVE": "1", **env})
    assert result.returncode == 0, result.stderr
    first, second, difference, decreased = result.stdout.strip().splitlines()[-4:]
    return first, second, float(difference), decreased == "True", result.stderr


def test_without_a_compiler_training_runs_on_python_with_one_message(tmp_path):
    first, second, difference, decreased, stderr = _train({"CXX": str(tmp_path / "no-such-c++"),
                                                           "HPCTRAIN_NATIVE_DIR": str(tmp_path / "native")})
    reason = f"no C++ compiler ({tmp_path / 'no-such-c++'} not found; install g++ or set CXX)"
    assert first == second == f"step_loop: Python (C++ step loop unavailable: {reason}; the Python loop runs)"
    assert difference < 1e-5 and decreased
    assert stderr.count(MESSAGE) == 1, stderr
    assert f"{MESSAGE}: {reason}. Training runs on the Python executors (slower)." in stderr
    assert not os.path.exists(tmp_path / "native")  # no build was tried


def test_pip_install_without_a_compiler_trains(tmp_path):
    """The project installed by pip where no compiler, no ninja and nothing else is on PATH: the
    install compiles nothing, and training runs on the Python executors after one message."""
    source = tmp_path / "source"
    shutil.copytree(os.path.join(REPO, "src"), source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), source)
    empty_path = {"PATH": str(tmp_path / "bin"), "CXX": ""}
    os.mkdir(tmp_path / "bin")
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                                "--no-index", "--target", str(tmp_path / "site"), str(source)],
                               capture_output=True, text=True, timeout=300, env={**os.environ, **empty_path})
    assert installed.returncode == 0, installed.stderr
    assert os.path.exists(tmp_path / "site" / "hpctrain" / "engine" / "native" / "step_loop.cpp")
    env = {**empty_path, "PYTHONPATH": str(tmp_path / "site"), "HPCTRAIN_NATIVE_DIR": str(tmp_path / "native")}
    first, second, difference, decreased, stderr = _train(env, cwd=tmp_path)
    assert first == second == ("step_loop: Python (C++ step loop unavailable: no C++ compiler (c++ not found; "
                               "install g++ or set CXX); the Python loop runs)")
    assert difference < 1e-5 and decreased
    assert stderr.count(MESSAGE) == 1, stderr


@pytest.fixture
def fresh_native_state(monkeypatch):
    """This process's view of the step loop as before its first use (loaded library aside)."""
    monkeypatch.setattr(native, "_state", {"op": None, "error": None, "warned": False})
    monkeypatch.setenv("HPCTRAIN_NATIVE", "1")


def test_another_cpu_architecture_trains_on_python_with_one_warning(monkeypatch, rng, fresh_native_state):
    monkeypatch.setattr(native.platform, "machine", lambda: "aarch64")
    reason = "it is written for x86-64 CPUs and this one is aarch64"
    assert native.unavailable_reason() == reason
    torch.manual_seed(0)
    trainer = hpctrain.Trainer(torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3)),
                               loss=CrossEntropy(sparse=True, from_logits=True), optimizer="adam")
    x, y = rng.normal(size=(64, 6)).astype("float32"), rng.integers(0, 3, size=64)
    with pytest.warns(native.StepLoopUnavailable) as caught:
        losses = [trainer.fit(x, y, epochs=2, batch_size=16, verbose=0).history["loss"] for _ in range(2)]
    assert [str(w.message) for w in caught] == [
        f"hpctrain: {MESSAGE}: {reason}. Training runs on the Python executors (slower)."]
    assert losses[1][-1] < losses[0][0]
    assert f"step_loop: Python (C++ step loop unavailable: {reason}; the Python loop runs)" in trainer.plan.explain()
    assert not native.build() and native.status() == f"C++ step loop unavailable: {reason}; the Python loop runs"


def test_turned_off_it_trains_on_python_without_a_warning(monkeypatch, rng, fresh_native_state, recwarn):
    monkeypatch.setenv("HPCTRAIN_NATIVE", "0")
    trainer = hpctrain.Trainer(torch.nn.Sequential(torch.nn.Linear(6, 3)),
                               loss=CrossEntropy(sparse=True, from_logits=True), optimizer="adam")
    trainer.fit(rng.normal(size=(32, 6)).astype("float32"), rng.integers(0, 3, size=32), verbose=0)
    assert "step_loop: Python (off (HPCTRAIN_NATIVE=0))" in trainer.plan.explain()
    assert not [w for w in recwarn if issubclass(w.category, native.StepLoopUnavailable)]


FIT_TWICE = textwrap.dedent("""
    import numpy as np, torch, hpctrain
    from hpctrain.engine import native
    from hpctrain.engine.losses import MeanSquaredError
    trainer = hpctrain.Trainer(torch.nn.Sequential(torch.nn.Linear(4, 3)), loss=MeanSquaredError(), optimizer="adam")
    def step_loop():
        trainer.fit(np.ones((8, 4), "float32"), np.ones((8, 3), "float32"), epochs=1, verbose=0)
        return [line for line in trainer.plan.explain().splitlines() if line.startswith("step_loop")][0]
""")


def _run(program, **env):
    return subprocess.run([sys.executable, "-c", FIT_TWICE + textwrap.dedent(program)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "HPCTRAIN_NATIVE": "1", **env})


def test_a_failed_build_leaves_training_on_the_python_loop(tmp_path):
    """A compiler that fails: the reason is kept, said once, and fit trains as before."""
    result = _run("""
        assert not native.build()
        print(native.status())
        print(step_loop())
        print(step_loop())
    """, CXX="/bin/false", HPCTRAIN_NATIVE_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    status, first, second = result.stdout.strip().splitlines()
    assert status.startswith(f"C++ step loop build failed (see {tmp_path}")
    assert first == second == f"step_loop: Python ({status})"
    assert result.stderr.count(MESSAGE) == 1, result.stderr


def test_an_unwritable_build_directory_leaves_training_on_the_python_loop():
    result = _run("""
        print(step_loop())
        print(step_loop())
    """, HPCTRAIN_NATIVE_DIR="/proc/hpctrain-native")
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.strip().splitlines()
    assert first == "step_loop: Python (C++ step loop not built yet: built in the background when a fit that can " \
                    "use it ends)"
    # the build attempted after the first fit could not write its directory; the reason is kept
    assert second.startswith("step_loop: Python (C++ step loop unavailable: cannot build in /proc/hpctrain-native")
    assert result.stderr.count(MESSAGE) == 1, result.stderr


def _doctor(*args, **env):
    return subprocess.run([sys.executable, "-m", "hpctrain.cli", "doctor", *args], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, **env))


@pytest.mark.native_loop
def test_doctor_builds_and_reports_the_step_loop():
    built = _doctor("--build")  # the session's build, found in the cache
    assert (built.returncode, built.stdout.strip()) == (0, "C++ step loop loaded")
    assert _doctor().stdout.rstrip().endswith("Step loop\n  C++ step loop loaded")


def test_doctor_build_without_a_working_compiler_fails_with_the_reason(tmp_path):
    result = _doctor("--build", CXX="/bin/false", HPCTRAIN_NATIVE_DIR=str(tmp_path), HPCTRAIN_NATIVE="1")
    assert result.returncode == 1
    assert result.stdout.startswith(f"C++ step loop build failed (see {tmp_path}")
    off = _doctor("--build", HPCTRAIN_NATIVE="0")
    assert (off.returncode, off.stdout.strip()) == (1, "off (HPCTRAIN_NATIVE=0)")


@pytest.mark.native_loop
def test_the_first_fit_starts_the_build_as_it_ends_and_a_later_fit_uses_the_loop(tmp_path):
    result = _run("""
        print(step_loop())
        assert native.build()  # waits for the build the first fit started
        print(step_loop())
    """, HPCTRAIN_NATIVE_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "step_loop: Python (C++ step loop not built yet: built in the background when a fit that can use it ends)",
        "step_loop: C++ (each run of gathered batches is one call)"]
    assert MESSAGE not in result.stderr
    built = os.path.join(tmp_path, os.listdir(tmp_path)[0])
    assert {"hpctrain_step_loop.so", "step_loop_opcodes.h", "build.ninja"} <= set(os.listdir(built))


@pytest.mark.native_loop
def test_the_opcode_table_is_defined_once_in_python():
    """The C++ source has no opcode numbers of its own: the build writes code.py's tables as the
    header it includes, and a program emitted by code.py runs in the built library."""
    with open(native.SOURCE) as f:
        source = f.read()
    assert '#include "step_loop_opcodes.h"' in source
    assert "kOperands[] =" not in source and "kMm =" not in source
    with open(os.path.join(native.build_dir(), native.HEADER)) as f:
        assert f.read() == code.cpp_header()
    assert code.OPCODES["MM"] == code.MM == 0 and len(code.OPERANDS) == len(code.INSTRUCTIONS)
    assert f"kDropoutBackward = {code.DROPOUT_BACKWARD}" in code.cpp_header()


def test_a_lock_left_by_a_killed_build_is_not_waited_for(tmp_path):
    """cpp_extension's lock file outlives a killed build, and its load() would wait for it forever:
    a lock whose builder process is gone counts as no build."""
    (tmp_path / "lock").touch()
    (tmp_path / "builder").write_text(str(os.getpid()))
    assert native.compile_job.build_running(str(tmp_path))
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "builder").write_text(finished.stdout.strip())
    assert not native.compile_job.build_running(str(tmp_path))
    native.compile_job._wait_for_another_build(str(tmp_path / "lock"), str(tmp_path / "builder"))
    assert not (tmp_path / "lock").exists()
