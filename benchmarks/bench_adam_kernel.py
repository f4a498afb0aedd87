"""The C++ step loop's Adam kernel against ATen's fused Adam, on optimizer state from real training.

Trains the workload's MLP (plain PyTorch, fused Adam, the benchmarks' synthetic data) for
``--epochs`` epochs, so that Adam's moments are what a training run has at that point: units
whose gradient went to zero (dead ReLUs) leave moments decaying into float32's subnormal range,
where arithmetic is slow. Then times one update of all parameters, taking turns, on copies of
that state: ``torch._fused_adam_`` (ATen's kernel, what ``torch.optim.Adam(fused=True)`` and
hpctrain's Python loop call) and ``torch.ops.hpctrain_native.adam_update`` (the C++ step loop's
kernel), each ``--calls`` calls per repeat, median and min over ``--repeats``. Both are called
from Python, so each figure includes one operator call's overhead (a few us; measured alone on
a 16-float tensor and printed). Checks first that both give the same weights.

    .venv/bin/python benchmarks/bench_adam_kernel.py [--workload seed] [--epochs 3] [--threads 2] [--output FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import WORKLOADS, make_dataset  # noqa: E402
from reporting import print_and_save  # noqa: E402
from torch_common import build_mlp  # noqa: E402

HYPERPARAMETERS = dict(lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-7)


def trained_state(workload, epochs: int):
    """(params, grads, exp_avgs, exp_avg_sqs, steps) of a fused Adam after ``epochs`` epochs."""
    torch.manual_seed(0)
    x_np, labels_np, _ = make_dataset(workload)
    x, labels = torch.from_numpy(x_np), torch.from_numpy(labels_np)
    model = build_mlp(workload)
    optimizer = torch.optim.Adam(model.parameters(), lr=HYPERPARAMETERS["lr"], eps=HYPERPARAMETERS["eps"], fused=True)
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), workload.batch_size):
            batch = order[start:start + workload.batch_size]
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[batch]), labels[batch]).backward()
            optimizer.step()
    params = [p.detach() for p in model.parameters()]
    states = [optimizer.state[p] for p in model.parameters()]
    return (params, [p.grad for p in model.parameters()], [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states], [s["step"] for s in states])


def copies(state):
    return [[t.clone() for t in tensors] for tensors in state]


def aten_update(params, grads, exp_avgs, exp_avg_sqs, steps, found):
    torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, maximize=False,
                       found_inf=found, **HYPERPARAMETERS)


def loop_update(params, grads, exp_avgs, exp_avg_sqs, steps, found):
    h = HYPERPARAMETERS
    torch.ops.hpctrain_native.adam_update(params, grads, exp_avgs, exp_avg_sqs, steps, h["lr"], h["beta1"],
                                          h["beta2"], h["weight_decay"], h["eps"], False, found)


def per_call_us(update, state, calls: int) -> float:
    found = torch.zeros(())
    start = time.perf_counter()
    for _ in range(calls):
        update(*state, found)
    return (time.perf_counter() - start) / calls * 1e6


def subnormal_share(tensors) -> float:
    tiny = torch.finfo(torch.float32).tiny
    flat = torch.cat([t.reshape(-1) for t in tensors])
    return ((flat != 0) & (flat.abs() < tiny)).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=[n for n, w in WORKLOADS.items() if w.model == "mlp"], default="seed")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs before timing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=200, help="updates per timed repeat")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    from hpctrain.engine import native

    if not native.build():
        sys.exit(f"the C++ step loop is not available: {native.status()}")
    torch.set_num_threads(args.threads)
    workload = WORKLOADS[args.workload]
    state = trained_state(workload, args.epochs)

    reference, ours = copies(state), copies(state)
    for _ in range(3):
        for tensors in (reference, ours):
            for step in tensors[4]:
                step.add_(1)
        aten_update(*reference, torch.zeros(()))
        loop_update(*ours, torch.zeros(()))
    same = all(torch.equal(a, b) for a, b in zip(reference[0], ours[0]))

    timings = {"ATen torch._fused_adam_": [], "C++ loop adam_update": []}
    for _ in range(args.repeats):
        for (name, series), update in zip(timings.items(), (aten_update, loop_update)):
            series.append(per_call_us(update, copies(state), args.calls))
    tiny = [torch.zeros(16) for _ in range(4)]
    overhead = {name: statistics.median(per_call_us(update, [[t.clone()] for t in tiny] + [[torch.ones(())]], 500)
                                        for _ in range(5))
                for name, update in zip(timings, (aten_update, loop_update))}

    numel = sum(p.numel() for p in state[0])
    lines = [f"{workload.label}, batch {workload.batch_size}: Adam over {numel} parameters in {len(state[0])} tensors, "
             f"{args.threads} threads, state after {args.epochs} epochs of training (command: .venv/bin/python "
             f"benchmarks/bench_adam_kernel.py {' '.join(sys.argv[1:])})",
             f"subnormal share of the moments: exp_avg {subnormal_share(state[2]):.1%}, "
             f"exp_avg_sq {subnormal_share(state[3]):.1%}",
             f"same weights after 3 updates: {same} (subnormal moments are flushed to zero by the C++ kernel, "
             "and move no weight)",
             f"{'kernel':<28}{'median us/call':>16}{'min':>10}{'call alone (16 floats)':>26}"]
    for name, series in timings.items():
        lines.append(f"{name:<28}{statistics.median(series):>16.1f}{min(series):>10.1f}{overhead[name]:>26.1f}")
    ratios = [a / b for a, b in zip(*timings.values())]
    lines.append(f"ATen / C++ per repeat: median {statistics.median(ratios):.2f}x, min {min(ratios):.2f}x")
    print_and_save("\n".join(lines), args.output)


if __name__ == "__main__":
    main()
