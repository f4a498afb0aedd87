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
    lines = result.stdout.splitlines()
    assert lines[0] == "[hardware]" and lines[1].startswith("device: ")
    assert any(line.startswith("threads: ") for line in lines)


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


def test_launch_refuses_arguments_torchrun_would_hang_or_fail_on(tmp_path, capsys):
    """Checked before any process starts: a node rank outside the group (torchrun would wait for
    it forever), no processes, a missing script."""
    from hpctrain.cli import main

    script = tmp_path / "train.py"
    script.write_text("print('trained')\n")
    cases = {
        ("--node-rank", "3", str(script)): "--node-rank must be 0 .. 0 with --nnodes 1; got 3",
        ("--nnodes", "2", "--node-rank", "-1", str(script)): "--node-rank must be 0 .. 1 with --nnodes 2; got -1",
        ("--nproc-per-node", "0", str(script)): "--nproc-per-node must be at least 1; got 0",
        (str(tmp_path / "missing.py"),): "missing.py: no such script",
        (): "give the script to run: hpctrain launch [options] SCRIPT [ARGS ...]",
    }
    for arguments, message in cases.items():
        assert main(["launch", *arguments]) == 2
        assert message in capsys.readouterr().err
