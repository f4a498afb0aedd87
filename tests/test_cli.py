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


def test_launch_help_names_its_torchrun_options():
    result = _run("launch", "--help")
    assert result.returncode == 0
    for option in ("--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port", "--max-restarts"):
        assert option in result.stdout


def test_launch_maps_onto_torchrun_arguments():
    from hpctrain.distribute.launch import torchrun_arguments

    assert torchrun_arguments(nproc_per_node=2, nnodes=3, node_rank=1, master_addr="node0", master_port=29400,
                              max_restarts=2, script="train.py", script_args=["--epochs", "5"]) == [
        "--nproc-per-node=2", "--nnodes=3", "--node-rank=1", "--master-addr=node0", "--master-port=29400",
        "--max-restarts=2", "train.py", "--epochs", "5"]
