"""The ``hpctrain`` command."""

from __future__ import annotations

import argparse
import json
import sys

import hpctrain


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpctrain",
        description="Train neural networks as fast as the hardware allows, with the simplicity of Keras.",
    )
    parser.add_argument("--version", action="version", version=f"hpctrain {hpctrain.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    plan = commands.add_parser("plan", help="show what hpctrain would run on here, and why")
    plan.set_defaults(run=_print_plan)
    doctor = commands.add_parser("doctor", help="describe this machine and what hpctrain will do with it")
    doctor.add_argument("--json", action="store_true", help="print one JSON object instead of the text screen")
    doctor.add_argument("--clear-cache", action="store_true",
                        help="forget the plans measured on earlier runs, so the next fit measures again")
    doctor.add_argument("--build", action="store_true",
                        help="build the C++ step loop now (~10 s) instead of in the background after the first fit")
    doctor.set_defaults(run=_print_doctor)
    launch = commands.add_parser("launch", help="start one process per replica (data-parallel training)",
                                 description="Start SCRIPT once per replica, through torchrun.")
    launch.add_argument("--nproc-per-node", type=int, default=1, help="replicas on this machine")
    launch.add_argument("--nnodes", type=int, default=1, help="machines taking part")
    launch.add_argument("--node-rank", type=int, default=0, help="this machine's index, 0 .. nnodes-1")
    launch.add_argument("--master-addr", default="127.0.0.1", help="address of the machine with node rank 0")
    launch.add_argument("--master-port", type=int, default=29500, help="a free port on that machine")
    launch.add_argument("--max-restarts", type=int, default=0, help="restart the group this often on a failure")
    # Optional for argparse only, so that a missing script is reported without naming the script's
    # own (optional) arguments as required too.
    launch.add_argument("script", nargs="?", help="the Python script to run in every process")
    launch.add_argument("script_args", nargs=argparse.REMAINDER, metavar="...", help="arguments for the script")
    launch.set_defaults(run=_launch)
    run = commands.add_parser("run", help="run an unchanged TensorFlow/Keras script on hpctrain",
                              description="Run SCRIPT with 'import tensorflow' giving hpctrain and 'import keras' "
                                          "the real Keras on its torch backend, trained by hpctrain.")
    run.add_argument("script", nargs="?", help="the Python script to run")
    run.add_argument("script_args", nargs=argparse.REMAINDER, metavar="...", help="arguments for the script")
    run.set_defaults(run=_run_script)
    return parser


def launch_argument_problem(args) -> str | None:
    """What is wrong with ``hpctrain launch``'s arguments, found before any process starts (torchrun
    would wait forever for a node rank that can never join, or fail with an empty message)."""
    import os

    if args.nproc_per_node < 1:
        return f"--nproc-per-node must be at least 1; got {args.nproc_per_node}"
    if args.nnodes < 1:
        return f"--nnodes must be at least 1; got {args.nnodes}"
    if not 0 <= args.node_rank < args.nnodes:
        return (f"--node-rank must be 0 .. {args.nnodes - 1} with --nnodes {args.nnodes}; got {args.node_rank} "
                "(number the machines from 0, the one at --master-addr being 0)")
    if args.script is None:
        return "give the script to run: hpctrain launch [options] SCRIPT [ARGS ...]"
    if not os.path.isfile(args.script):
        return f"{args.script}: no such script (give the path of the Python file to run in every process)"
    return None


def _launch(args) -> int:
    from hpctrain.distribute.launch import launch, torchrun_arguments

    problem = launch_argument_problem(args)
    if problem is not None:
        print(f"hpctrain launch: {problem}", file=sys.stderr)
        return 2

    return launch(torchrun_arguments(
        nproc_per_node=args.nproc_per_node, nnodes=args.nnodes, node_rank=args.node_rank,
        master_addr=args.master_addr, master_port=args.master_port, max_restarts=args.max_restarts,
        script=args.script, script_args=args.script_args))


def _run_script(args) -> int:
    import os

    if args.script is None:
        print("hpctrain run: give the script to run: hpctrain run SCRIPT [ARGS ...]", file=sys.stderr)
        return 2
    if not os.path.isfile(args.script):
        print(f"hpctrain run: {args.script}: no such script (give the path of the Python file to run)",
              file=sys.stderr)
        return 2
    from hpctrain.run_script import run_script

    run_script(args.script, args.script_args)
    return 0


def _print_plan(args) -> int:
    print(hpctrain.make_plan().explain())
    return 0


def _print_doctor(args) -> int:
    from hpctrain.hardware import diagnose, diagnosis_as_dict, plan_cache, render_text

    if args.clear_cache:
        removed = plan_cache.clear()
        print(f"removed {removed} cached {'plan' if removed == 1 else 'plans'} from {plan_cache.cache_dir()}")
        return 0
    from hpctrain.engine import native

    if args.build:
        built = native.build()
        print(native.status())
        return 0 if built else 1
    diagnosis = diagnose()
    native.step_loop()  # loaded where built, so that the status says so
    if args.json:
        report = {"hpctrain_version": hpctrain.__version__, **diagnosis_as_dict(diagnosis)}
        print(json.dumps({**report, "step_loop": native.status()}, indent=2))
    else:
        print(f"hpctrain {hpctrain.__version__} doctor\n\n{render_text(diagnosis)}\n\nStep loop\n  {native.status()}")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
