"""Threads re-measured while training against a thread count fixed for the whole run.

Three models of one workload train in turn in one process, round after round, so that each round
sees the same state of the machine: hpctrain's default plan (threads measured at the start and
re-measured every 2 s while training), and plans fixed at 1 and at 2 threads. Each round is one
fit of ``--epochs`` epochs per model; its epoch time is the fastest of them. On a machine whose
second core is sometimes held by other work, the fixed counts trade places from round to round
and the re-measured plan should follow the faster one.

``--contend N`` makes such phases on purpose: in alternate blocks of N rounds, a process spinning
on the last CPU (pinned there) holds that core, as a neighbour's job would.

    .venv/bin/python benchmarks/bench_thread_retune.py [--workload seed] [--rounds 30] [--epochs 3] [--contend 5]

Writes benchmarks/results/thread_retune.json and prints each round.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from common import WORKLOADS, make_dataset  # noqa: E402
from reporting import write_json  # noqa: E402
from torch_common import hpctrain_mlp  # noqa: E402

VARIANTS = ("retuned", "fixed_1", "fixed_2")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="seed", choices=[name for name, w in WORKLOADS.items() if w.model == "mlp"])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per fit; the round keeps the fastest")
    parser.add_argument("--contend", type=int, default=0,
                        help="alternate blocks of this many rounds without and with a process holding the last CPU")
    parser.add_argument("--output", default=str(BENCH_DIR / "results" / "thread_retune.json"))
    return parser.parse_args(argv)


@contextlib.contextmanager
def last_cpu_held(active: bool):
    """A busy loop pinned to the last CPU for the duration, when ``active``."""
    if not active:
        yield
        return
    cpu = max(os.sched_getaffinity(0))
    spinner = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    try:
        time.sleep(0.2)  # pinned and spinning before the round starts
        yield
    finally:
        spinner.kill()
        spinner.wait()


def epoch_seconds_callback(times: list):
    from hpctrain.keras.callbacks import Callback

    class EpochSeconds(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    return EpochSeconds()


def main(argv=None) -> None:
    args = parse_args(argv)
    import hpctrain as tf

    workload = WORKLOADS[args.workload]
    x, _, y = make_dataset(workload)
    plans = {"retuned": tf.make_plan(), "fixed_1": tf.make_plan(threads=1), "fixed_2": tf.make_plan(threads=2)}
    models = {name: hpctrain_mlp(workload, plans[name]) for name in VARIANTS}
    for model in models.values():  # warm-up: the start-of-fit measurements, first-touch of buffers
        model.fit(x, y, batch_size=workload.batch_size, epochs=1, verbose=0)
    rounds = []
    for index in range(args.rounds):
        row = {"contended": bool(args.contend) and (index // args.contend) % 2 == 1}
        with last_cpu_held(row["contended"]):
            for name in VARIANTS:
                times = []
                models[name].fit(x, y, batch_size=workload.batch_size, epochs=args.epochs, verbose=0,
                                 callbacks=[epoch_seconds_callback(times)])
                row[name] = min(times)
        row["retuned_threads"] = models["retuned"].plan.threads
        row["retuned_threads_reason"] = next(line for line in models["retuned"].plan.explain().splitlines()
                                             if line.startswith("threads:"))
        rounds.append(row)
        print(f"round {index + 1:3d}{' (last CPU held)' if row['contended'] else ''}: "
              + "  ".join(f"{name} {row[name]:.3f} s" for name in VARIANTS)
              + f"  (retuned now on {row['retuned_threads']} threads)", flush=True)

    best_fixed = [min(row["fixed_1"], row["fixed_2"]) for row in rounds]
    summary = {name: {"median_epoch_s": statistics.median(row[name] for row in rounds),
                      "min_epoch_s": min(row[name] for row in rounds)} for name in VARIANTS}
    summary["retuned_over_best_fixed_per_round"] = {
        "median": statistics.median(row["retuned"] / best for row, best in zip(rounds, best_fixed)),
        "max": max(row["retuned"] / best for row, best in zip(rounds, best_fixed)),
    }
    summary["rounds_where_1_thread_was_faster"] = sum(row["fixed_1"] < row["fixed_2"] for row in rounds)
    for contended in (False, True):
        part = [row for row in rounds if row["contended"] == contended]
        if part:
            summary["contended" if contended else "uncontended"] = {
                name: statistics.median(row[name] for row in part) for name in VARIANTS}
    report = {
        "benchmark": "thread count re-measured while training vs fixed for the run, models taking turns each round",
        "command": "python " + " ".join(["benchmarks/bench_thread_retune.py", *(argv or sys.argv[1:])]),
        "workload": workload.name,
        "epochs_per_fit": args.epochs,
        "rounds": rounds,
        "summary": summary,
        "retuned_plan_threads": models["retuned"].plan.explain().splitlines(),
    }
    write_json(Path(args.output), report)
    for name in VARIANTS:
        print(f"{name:8s} median {summary[name]['median_epoch_s']:.3f} s/epoch, fastest {summary[name]['min_epoch_s']:.3f}")
    for phase in ("uncontended", "contended"):
        if phase in summary and args.contend:
            print(f"{phase:12s} medians: " + ", ".join(f"{name} {summary[phase][name]:.3f} s" for name in VARIANTS))
    ratio = summary["retuned_over_best_fixed_per_round"]
    print(f"retuned / the faster fixed count of the same round: median {ratio['median']:.3f}, worst {ratio['max']:.3f}; "
          f"1 thread was the faster in {summary['rounds_where_1_thread_was_faster']} of {len(rounds)} rounds")


if __name__ == "__main__":
    main()
