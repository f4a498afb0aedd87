"""The automatic plan against the default plan and against an exhaustive sweep of the same candidates.

For each workload, in one process and one run:
- sweep: every (batch size, threads, precision) the tuner considers, each trained from a fresh
  model for 1 warm-up epoch + N measured epochs with compile off (the tuner never compiles the
  static executor, and bf16 runs under autograd either way);
- auto: ``fit(batch_size="auto")`` with ``make_plan(precision="auto")`` and an empty plan cache;
  the tuning time (fit's start to its first epoch) is reported beside the epoch time;
- default: ``fit(batch_size=32)`` with ``make_plan()``.
Epoch time is the median of the measured epochs.

    .venv/bin/python benchmarks/bench_plan.py                    # seed and mlp1024
    .venv/bin/python benchmarks/bench_plan.py --epochs 2 --workloads seed

Writes benchmarks/results/plan_auto.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from common import WORKLOADS, make_dataset  # noqa: E402
from machine import CpuSnapshot  # noqa: E402
from reporting import write_json  # noqa: E402

# mlp1024 at batch 32 on one thread takes ~13 s per 60,000-row epoch; a fifth of the rows keeps the
# whole sweep to minutes while every epoch still has >= 12 steps at the largest batch.
SAMPLES = {"seed": 60_000, "mlp1024": 12_000}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="seed,mlp1024")
    parser.add_argument("--epochs", type=int, default=2, help="measured epochs per run, after one warm-up epoch")
    parser.add_argument("--output", default=str(BENCH_DIR / "results" / "plan_auto.json"))
    return parser.parse_args(argv)


class EpochTimer:
    """Wall time of each epoch and of everything fit does before the first one (the tuning)."""

    def __init__(self):
        from hpctrain.keras.callbacks import Callback

        timer = self

        class _Hook(Callback):
            def on_train_begin(self, logs=None):
                timer.train_begin = time.perf_counter()

            def on_epoch_begin(self, epoch, logs=None):
                timer.epoch_start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                timer.epochs.append(time.perf_counter() - timer.epoch_start)

        self.callback = _Hook()
        self.epochs: list[float] = []
        self.train_begin = None


def train(workload, data, *, batch_size, plan, epochs: int) -> dict:
    import hpctrain
    from hpctrain.keras.layers import Dense
    from hpctrain.keras.models import Sequential

    hpctrain.keras.utils.set_random_seed(0)
    x, labels = data
    sizes = workload.layer_sizes
    layers = [Dense(sizes[1], activation="relu", input_dim=sizes[0])]
    layers += [Dense(units, activation="relu") for units in sizes[2:-1]] + [Dense(sizes[-1], activation="softmax")]
    model = Sequential(layers)
    model.compile(optimizer=hpctrain.keras.optimizers.Adam(workload.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"], plan=plan)
    timer = EpochTimer()
    started = time.perf_counter()
    model.fit(x, labels, batch_size=batch_size, epochs=1 + epochs, verbose=0, callbacks=[timer.callback])
    plan = model.plan
    return {
        "batch_size": plan.batch_size or batch_size,
        "threads": plan.threads,
        "precision": plan.precision,
        "compile": plan.compile,
        "executor": plan.executor,
        "epoch_s": statistics.median(timer.epochs[1:]),
        "tuning_s": timer.train_begin - started,
        "explain": plan.explain(),
    }


def sweep(workload, data, epochs: int) -> list[dict]:
    from hpctrain.engine.tuning import thread_candidates
    from hpctrain.hardware import inspect_machine, make_plan
    from hpctrain.hardware.batch_size import cpu_batch_candidates
    from hpctrain.hardware.plan import bf16_hardware

    machine = inspect_machine()
    import torch

    precisions = ["float32", "bfloat16"] if bf16_hardware(machine, torch.device("cpu"))[0] else ["float32"]
    runs = []
    for batch_size in cpu_batch_candidates(len(data[0])):
        for threads in thread_candidates(machine.cpu.physical_cores):
            for precision in precisions:
                plan = make_plan(device="cpu", threads=threads, precision=precision, compile=False)
                run = train(workload, data, batch_size=batch_size, plan=plan, epochs=epochs)
                run.pop("explain")
                print(f"  sweep {workload.name} batch {batch_size:5d} threads {threads} {precision:9s} "
                      f"{run['epoch_s']:.3f} s/epoch", flush=True)
                runs.append(run)
    return runs


def measure_workload(name: str, epochs: int) -> dict:
    from hpctrain.hardware import make_plan

    workload = dataclasses.replace(WORKLOADS[name], num_samples=SAMPLES[name])
    x, labels, _ = make_dataset(workload)
    data = (x, labels)
    before, own_before, clock = CpuSnapshot.take(), _own_cpu_seconds(), time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["HPCTRAIN_CACHE_DIR"] = cache  # an empty cache: the auto plan measures everything
        auto = train(workload, data, batch_size="auto", plan=make_plan(precision="auto"), epochs=epochs)
    default = train(workload, data, batch_size=32, plan=make_plan(), epochs=epochs)
    default.pop("explain")
    runs = sweep(workload, data, epochs)
    best = min(runs, key=lambda run: run["epoch_s"])
    load = _foreign_share(before, own_before, time.perf_counter() - clock)
    return {
        "workload": workload.description, "samples": workload.num_samples, "measured_epochs": epochs,
        "auto": auto, "default": default, "sweep_best": best, "sweep": runs,
        "auto_over_best": auto["epoch_s"] / best["epoch_s"],
        "default_over_best": default["epoch_s"] / best["epoch_s"],
        "foreign_cpu_load": load,
    }


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _foreign_share(before: CpuSnapshot, own_before: float, wall_s: float) -> float:
    """The share of the machine's CPU time that other processes used (or the hypervisor stole)."""
    after = CpuSnapshot.take()
    others = (after.busy_s - before.busy_s) - (_own_cpu_seconds() - own_before) + (after.steal_s - before.steal_s)
    return round(max(0.0, others) / (wall_s * (os.cpu_count() or 1)), 3)


def markdown(results: dict) -> str:
    lines = ["| workload | default plan s/epoch | auto plan s/epoch (choice) | tuning s | sweep best s/epoch (choice) "
             "| auto / best |", "| --- | --- | --- | --- | --- | --- |"]
    for name, result in results.items():
        auto, best, default = result["auto"], result["sweep_best"], result["default"]

        def choice(run):
            return f"batch {run['batch_size']}, {run['threads']} threads, {run['precision']}"

        lines.append(f"| {name} ({result['samples']:,} rows) | {default['epoch_s']:.3f} | {auto['epoch_s']:.3f} "
                     f"({choice(auto)}) | {auto['tuning_s']:.2f} | {best['epoch_s']:.3f} ({choice(best)}) | "
                     f"{result['auto_over_best']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    results = {}
    for name in args.workloads.split(","):
        print(f"{name}:", flush=True)
        results[name] = measure_workload(name, args.epochs)
    table = markdown(results)
    print(table)
    write_json(Path(args.output), {"command": "python benchmarks/bench_plan.py " + " ".join(argv or sys.argv[1:]),
                                   "table": table, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
