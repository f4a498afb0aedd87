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
    doctor.set_defaults(run=_print_doctor)
    return parser


def _print_plan(args) -> int:
    print(hpctrain.make_plan().explain())
    return 0


def _print_doctor(args) -> int:
    from hpctrain.hardware import diagnose, diagnosis_as_dict, render_text

    diagnosis = diagnose()
    print(json.dumps(diagnosis_as_dict(diagnosis), indent=2) if args.json else render_text(diagnosis))
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
