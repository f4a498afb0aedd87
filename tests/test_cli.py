import subprocess
import sys

import hpctrain


def _run(*args):
    return subprocess.run([sys.executable, "-m", "hpctrain.cli", *args], capture_output=True, text=True, timeout=60)


def test_version():
    result = _run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"hpctrain {hpctrain.__version__}"


def test_help_lists_the_commands():
    result = _run("--help")
    assert result.returncode == 0
    assert "usage: hpctrain" in result.stdout and "plan" in result.stdout


def test_plan_command_prints_the_plan():
    result = _run("plan")
    assert result.returncode == 0
    assert result.stdout.startswith("device: ") and "threads: " in result.stdout
