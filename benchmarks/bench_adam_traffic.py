"""Is the Adam update bound by memory or by arithmetic? Adam against passes with its memory traffic.

One Adam/AdamW step reads the parameter, gradient and both moments and writes the parameter and
both moments: 7 floats per parameter. This times, in one process, taking turns, per size (the seed
MLP's 25,450 parameters and the wide MLP's 1,863,690, as one flat tensor each) and thread count:

- ``adam``: ``torch._fused_adam_``, ATen's fused kernel (the C++ step loop's own has the same
  arithmetic; benchmarks/bench_adam_kernel.py compares the two);
- ``same_traffic``: ``torch._foreach_addcmul_`` on (parameter, first moment, second moment) with
  the gradient twice: reads and writes the same tensors as Adam, with one multiply-add each;
- ``sqrt_divide``: one ``m / sqrt(v)`` pass into the parameter: Adam's costly arithmetic alone.

Where ``adam`` takes about what ``same_traffic`` takes, the update runs at the memory system's
speed, and only moving fewer bytes (or overlapping the update with other work) makes it cheaper.

    .venv/bin/python benchmarks/bench_adam_traffic.py [--rounds 7] [--output FILE]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

SIZES = {"seed MLP": 25_450, "wide MLP": 1_863_690}


def per_call_us(call, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls * 1e6


def contenders(size: int) -> dict:
    param, grad, exp_avg, exp_avg_sq = (torch.rand(size) for _ in range(4))
    steps = [torch.zeros(())]

    def adam():
        torch._fused_adam_([param], [grad], [exp_avg], [exp_avg_sq], [], steps, amsgrad=False, lr=1e-3,
                           beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-7, maximize=False)

    def same_traffic():
        torch._foreach_addcmul_([param, exp_avg, exp_avg_sq], [grad] * 3, [grad] * 3, value=1e-12)

    def sqrt_divide():
        torch.div(exp_avg, exp_avg_sq.sqrt(), out=param)

    return {"adam": adam, "same_traffic": same_traffic, "sqrt_divide": sqrt_divide}


def measure(size: int, threads: int, rounds: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    calls = max(20, 2_000_000 // size)
    runs = contenders(size)
    for run in runs.values():
        per_call_us(run, calls)  # warm-up
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(per_call_us(run, calls))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    lines = [f"Adam against passes with its memory traffic, median us per call over {args.rounds} rounds "
             "(command: .venv/bin/python benchmarks/bench_adam_traffic.py"
             f"{'' if args.rounds == 7 else f' --rounds {args.rounds}'})",
             f"{'parameters':<22} {'threads':>7} {'adam':>10} {'same_traffic':>13} {'sqrt_divide':>12} "
             f"{'adam/same_traffic':>18}"]
    for label, size in SIZES.items():
        for threads in (1, 2):
            result = measure(size, threads, args.rounds)
            lines.append(f"{f'{label} {size:,}':<22} {threads:>7} {result['adam']:>10.1f} "
                         f"{result['same_traffic']:>13.1f} {result['sqrt_divide']:>12.1f} "
                         f"{result['adam'] / result['same_traffic']:>18.2f}")
    text = "\n".join(lines)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
