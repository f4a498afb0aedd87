"""The C++ step loop against the static step's Python loop, in one process, taking turns.

The workload's MLP (Adam, 2 threads) trains one epoch per fit, alternately with the C++ loop
(``HPCTRAIN_NATIVE=1``) and without (``=0``), for ``--rounds`` rounds; each round's ratio
Python / C++ is paired, so a change of the machine's phase between rounds cancels out. Both loops
give bit-identical weights (``tests/engine/test_native_loop.py``); only the time differs.

    .venv/bin/python benchmarks/bench_step_loop.py [--workload seed] [--rounds 8] [--output FILE]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from common import WORKLOADS, make_dataset, mlp_rounds_arguments  # noqa: E402
from reporting import print_and_save  # noqa: E402
from torch_common import hpctrain_mlp  # noqa: E402


def main(argv=None) -> None:
    args = mlp_rounds_arguments(__doc__.splitlines()[0], argv)
    import hpctrain as tf
    from hpctrain.engine import native

    if not native.build():
        sys.exit(f"the C++ step loop is not available: {native.status()}")
    workload = WORKLOADS[args.workload]
    x, _, y = make_dataset(workload)
    model = hpctrain_mlp(workload, plan=tf.make_plan(threads=2))
    model.fit(x, y, batch_size=workload.batch_size, epochs=1, verbose=0)
    seconds = {"C++": [], "Python": []}
    for _ in range(args.rounds):
        for loop, flag in (("C++", "1"), ("Python", "0")):
            os.environ["HPCTRAIN_NATIVE"] = flag
            start = time.perf_counter()
            model.fit(x, y, batch_size=workload.batch_size, epochs=1, verbose=0)
            seconds[loop].append(time.perf_counter() - start)
    command = " ".join([".venv/bin/python benchmarks/bench_step_loop.py", *(argv or sys.argv[1:])])
    ratios = [python / native_loop for native_loop, python in zip(seconds["C++"], seconds["Python"])]
    lines = [f"{args.workload} workload, one fit of one epoch per loop per round, 2 threads, {args.rounds} rounds "
             f"(command: {command})",
             f"{'loop':8s} {'median s':>9s} {'min s':>7s}  per round"]
    for loop, values in seconds.items():
        lines.append(f"{loop:8s} {statistics.median(values):9.3f} {min(values):7.3f}  "
                     + " ".join(f"{value:.3f}" for value in values))
    lines.append(f"Python / C++, median of the rounds' ratios: {statistics.median(ratios):.2f}x")
    print_and_save("\n".join(lines), args.output)


if __name__ == "__main__":
    main()
