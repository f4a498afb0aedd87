"""Where a static step's time goes, by leaving parts out of the real training loop.

torch.profiler adds ~1 us per operator call and inflates a 70 us step by a third, so its
per-operator times overstate the small calls. Here the seed workload (MLP 784-32-10, Adam,
batch 32) trains through hpctrain's Keras front end while parts of the step are left out, one
variant at a time, each variant one fit of 2 epochs (the faster one kept) per round, variants
taking turns for ``--rounds`` rounds; a part's cost is the median over rounds of (variant - full)
in the same round, so a change of the machine's phase between rounds cancels out. Leaving a
part out changes what the next parts compute on (the weights stop moving without the update),
not how long they take.

    .venv/bin/python benchmarks/ablate_seed_step.py [--rounds 10] [--output FILE]

This patches the step's generated Python, so it runs with the C++ step loop off
(``HPCTRAIN_NATIVE=0``); ``ablate_step_loop.py`` does the same for the C++ loop.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from ablation import parts_table, train_variants  # noqa: E402
from common import WORKLOADS  # noqa: E402
from reporting import print_and_save  # noqa: E402

# name -> (generated-program lines to drop (regular expressions), parts of the call to skip)
VARIANTS = {
    "full step": ((), ()),
    "without the two large GEMMs (first layer)": ((r"KB0|GWB0",), ()),
    "without the three small GEMMs (last layer)": ((r"KB\w?2|GWB2|KT2",), ()),
    "without activation and its backward": ((r"act",), ()),
    # Replaced by a zero fill of the gradient buffer (~0.5 us), so that the step stays finite.
    "without the output gradient (softmax, scatter)": ((r"output_gradient",), ("zero output gradient",)),
    "without the non-finite check": ((), ("guard",)),
    "without the Adam update": ((), ("update",)),
    "without the program (forward and backward)": ((r"mm\(|act|output_gradient",), ()),
    "without the step (gather, loop and metrics slot only)": ((r"mm\(|act|output_gradient",), ("guard", "update")),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--output", type=Path, help="also write the table here")
    return parser.parse_args(argv)


def install_variants(static_step):
    """Patch the program writer and the step call to leave out what the current variant names."""
    current = {"drop": (), "skip": ()}
    write = static_step._ProgramWriter.write

    def write_without(self):
        source, names = write(self)
        lines = [line for line in source.splitlines() if not any(re.search(p, line) for p in current["drop"])]
        source = "\n".join(lines) + "\n"
        if "scale =" not in source:  # the gradient GEMMs still need their factor and z
            zero = "\n    G_out.zero_()" if "zero output gradient" in current["skip"] else ""
            source = source.replace("def step(x, y, logits_out, rows):",
                                    "def step(x, y, logits_out, rows):\n    scale = 1.0 / rows\n    z = logits_out" + zero)
        return source, names

    def call(self, x, y, metrics, batch_rows=None):
        shape = x.shape
        rows = shape[0]
        (self.programs.get(shape) or self._program_for(shape))(x, y, metrics.slot(rows, y), rows)
        if "guard" not in current["skip"] and self._guard_check is not None:
            self._guard_check()
        if "update" not in current["skip"]:
            self.update()

    static_step._ProgramWriter.write = write_without
    static_step.StaticStep.__call__ = call
    return current


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ["HPCTRAIN_NATIVE"] = "0"  # the variants patch the Python step
    from hpctrain.engine import static_step

    current = install_variants(static_step)
    measured, _ = train_variants(WORKLOADS["seed"], VARIANTS, lambda drop, skip: current.update(drop=drop, skip=skip),
                                 args.rounds)
    command = " ".join([".venv/bin/python benchmarks/ablate_seed_step.py", *(argv or sys.argv[1:])])
    title = f"seed workload, hpctrain static step on 2 threads, {args.rounds} rounds (command: {command})"
    print_and_save("\n".join(parts_table(title, measured)), args.output)


if __name__ == "__main__":
    main()
