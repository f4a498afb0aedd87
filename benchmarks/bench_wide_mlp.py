"""The wide MLP against its GEMM limit, every contender in one process, taking turns.

The mlp1024 workload (784-1024-1024-10, batch 256, Adam) trained by hpctrain's native API
(``hpctrain.Trainer`` on a ``torch.nn.Sequential``) and by its Keras front end (the real Keras
model of ``impl_keras_style.py``), beside the GEMM-only limit (``impl_gemm_limit.py``: only the
step's matrix products, each on the faster of MKL and oneDNN, and on MKL alone). In one process
on fixed threads, one epoch of each per round, contenders in turn, for ``--rounds`` rounds: a
change of the shared machine's phase hits every contender of a round alike, so the per-round
ratios to the limit are steadier than times from separate processes.

    .venv/bin/python benchmarks/bench_wide_mlp.py [--rounds 12] [--samples 10240] [--output FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from common import WORKLOADS, make_dataset  # noqa: E402
from impl_gemm_limit import (  # noqa: E402
    allocate_operands,
    epoch_schedule,
    fastest_products,
    run_epoch,
    run_epoch_of_calls,
)
from reporting import print_and_save  # noqa: E402
from torch_common import build_mlp, hpctrain_mlp  # noqa: E402

# The clock every contender is timed by: wall time, or with --clock cpu the process's CPU time, which
# on one thread counts only this process's work however many others share the cores.
CLOCK = [time.perf_counter]


def gemm_limit_epochs(workload):
    """``(fastest, mkl)``: one epoch of the limit's products per call, as impl_gemm_limit.py runs them."""
    schedule = epoch_schedule(workload, allocate_operands(workload))
    calls = fastest_products(schedule)
    return (lambda: run_epoch_of_calls(calls)), (lambda: run_epoch(schedule))


def fit_epoch(model, x, y, batch_size: int):
    """One epoch of ``model.fit`` per call, timed from inside (epoch begin to end, as the benchmarks do)."""
    import hpctrain.keras.callbacks as keras_callbacks

    seconds = []

    class EpochTime(keras_callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = CLOCK[0]()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(CLOCK[0]() - self.start)

    def run():
        model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=True, callbacks=[EpochTime()])
        return seconds.pop()

    return run


def trainer_epoch(trainer, x, y, batch_size: int):
    from hpctrain.engine.callbacks import Callback

    seconds = []

    class EpochTime(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = CLOCK[0]()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(CLOCK[0]() - self.start)

    def run():
        trainer.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, callbacks=[EpochTime()])
        return seconds.pop()

    return run


def contenders(workload, threads: int) -> tuple[dict, dict]:
    """name -> a call running one epoch and returning its seconds; and label -> each model, for its plan."""
    import torch

    import hpctrain
    from hpctrain.engine.losses import CrossEntropy
    from hpctrain.hardware import gemm

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x, _labels, y_onehot = make_dataset(workload)
    plan = hpctrain.make_plan(threads=threads)
    keras_model = hpctrain_mlp(workload, plan=plan)
    trainer = hpctrain.Trainer(build_mlp(workload), loss=CrossEntropy(sparse=False, from_logits=True),
                               optimizer=lambda params, device: torch.optim.Adam(params, lr=workload.learning_rate,
                                                                                 fused=True),
                               metrics=["accuracy"], plan=hpctrain.make_plan(threads=threads))
    fastest, mkl = gemm_limit_epochs(workload)

    def timed(call):
        def run():
            start = CLOCK[0]()
            call()
            return CLOCK[0]() - start
        return run

    table = {"gemm_limit": timed(fastest), "gemm_limit_mkl": timed(mkl),
             "hpctrain_native_api": trainer_epoch(trainer, x, y_onehot, workload.batch_size),
             "hpctrain_keras_front": fit_epoch(keras_model, x, y_onehot, workload.batch_size)}
    models = {"keras front": keras_model, "native api": trainer}
    if gemm.onednn_linear() is not None:
        onednn_model = hpctrain_mlp(workload, plan=hpctrain.make_plan(threads=threads))
        table["hpctrain_keras_front_onednn"] = with_onednn(fit_epoch(onednn_model, x, y_onehot, workload.batch_size))
        models["keras front, oneDNN"] = onednn_model
    return table, models


def with_onednn(run):
    """``run`` with every product of 2.5 M multiply-adds and more on oneDNN, whatever the CPU (the
    rule before MKL took them on Intel CPUs): the step's programs are written during its first fits."""
    from hpctrain.hardware import gemm

    def patched():
        chosen = gemm.large_product_linear
        gemm.large_product_linear = gemm.onednn_linear
        try:
            return run()
        finally:
            gemm.large_product_linear = chosen

    return patched


def measure(table: dict, rounds: int) -> dict[str, list[float]]:
    for run in table.values():  # warm-up: first fits build programs, the native loop loads
        run()
        run()
    seconds = {name: [] for name in table}
    for _ in range(rounds):
        for name, run in table.items():
            seconds[name].append(run())
    return seconds


def report(workload, seconds: dict[str, list[float]], rounds: int, command: str, plans: dict) -> str:
    steps = workload.steps_per_epoch
    limit, mkl = seconds["gemm_limit"], seconds["gemm_limit_mkl"]
    lines = [f"{workload.name}, {workload.num_samples} samples ({steps} steps) per epoch, {rounds} rounds in one "
             f"process, contenders in turn (command: {command})",
             "x limit: per round, this contender's epoch over the limit's (the faster of MKL and oneDNN per "
             "product, chosen by timing); x MKL limit: over the limit's on MKL alone; median and range over rounds",
             f"{'contender':28s} {'min us/step':>12s} {'median us/step':>15s} {'x limit':>8s} {'range':>12s} "
             f"{'x MKL limit':>12s} {'range':>12s}"]
    for name, values in seconds.items():
        ratios = [v / l for v, l in zip(values, limit)]
        to_mkl = [v / l for v, l in zip(values, mkl)]
        lines.append(f"{name:28s} {min(values) / steps * 1e6:12.0f} {statistics.median(values) / steps * 1e6:15.0f} "
                     f"{statistics.median(ratios):8.3f} {min(ratios):5.3f}-{max(ratios):.3f} "
                     f"{statistics.median(to_mkl):12.3f} {min(to_mkl):5.3f}-{max(to_mkl):.3f}")
    for label, model in plans.items():
        explained = model.plan.explain().splitlines()
        lines.append(f"{label} plan: " + "; ".join(line.strip() for line in explained
                                                    if any(k in line for k in ("executor", "step_loop", "matmul"))))
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--samples", type=int, default=10_240, help="samples per epoch (10240: 40 steps)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: process CPU time, for --threads 1 on a machine others are using")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    CLOCK[0] = time.perf_counter if args.clock == "wall" else time.process_time
    workload = dataclasses.replace(WORKLOADS["mlp1024"], num_samples=args.samples)
    table, plans = contenders(workload, args.threads)
    seconds = measure(table, args.rounds)
    command = " ".join([".venv/bin/python benchmarks/bench_wide_mlp.py", *(argv or sys.argv[1:])])
    print_and_save(report(workload, seconds, args.rounds, command, plans), args.output)


if __name__ == "__main__":
    main()
