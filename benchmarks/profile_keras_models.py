"""Where a step of the convnet and of the custom-layer model goes, on hpctrain's Keras front end.

    .venv/bin/python benchmarks/profile_keras_models.py --out benchmarks/results/keras_models_profile.txt

Each model (the same Keras program as bench_keras_front.py's, impl_keras_style.py's builders and
data) is fitted one warm-up epoch, then one epoch under ``torch.profiler``. The table groups the
operators' own CPU time (``self_cpu_time_total``) into what the step does: convolution and its
backward, pooling, matrix products, the Adam update, the rest of the ATen operators; what the
operators do not account for of the profiled wall time is Python (Keras's layer calls, autograd's
bookkeeping, the engine's loop) and the profiler's own cost, which inflates it: read the shares,
not the absolute times.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import WORKLOADS, make_dataset  # noqa: E402

# Operator name fragments, in the order they are tried, and the part of the step they belong to.
GROUPS = (
    ("convolution_backward", "convolution backward"),
    ("convolution", "convolution forward"),
    ("max_pool", "pooling"),
    ("avg_pool", "pooling"),
    ("mm", "matrix products"),
    ("addmm", "matrix products"),
    ("linear", "matrix products"),
    ("adam", "Adam update"),
)


SAMPLES = 4096  # per profiled epoch: enough steps for stable shares, few enough for the profiler's trace
TOP = 8  # operators listed by their own CPU time


def group_of(name: str) -> str:
    lowered = name.lower()
    for fragment, group in GROUPS:
        if fragment in lowered:
            return group
    return "other ATen operators"


def profile(model_name: str, threads: int) -> tuple[float, int, dict[str, float], list]:
    """Wall seconds of the profiled epoch, its steps, own CPU seconds per group, and the top operators."""
    import torch

    import hpctrain  # noqa: F401 - selects Keras's torch backend and installs the seam
    from hpctrain.keras import layers, ops
    from hpctrain.keras.models import Sequential
    from impl_keras_style import build_model

    torch.set_num_threads(threads)
    workload = WORKLOADS[model_name]
    x, _, y = make_dataset(workload)
    x, y = x[:SAMPLES], y[:SAMPLES]
    model = build_model(workload, Sequential, layers, ops)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"],
                  plan=hpctrain.make_plan(threads=threads))
    model.fit(x, y, batch_size=workload.batch_size, epochs=1, verbose=0)  # warm-up
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        model.fit(x, y, batch_size=workload.batch_size, epochs=1, verbose=0, shuffle=False)
        wall = time.perf_counter() - started
    groups: dict[str, float] = defaultdict(float)
    events = prof.key_averages()
    for event in events:
        # Optimizer.step's own time is the Python around the fused kernel; other ranges are
        # containers whose time their operators already count. hpctrain_native:: are hpctrain's
        # own kernels (its 2x2 max pooling).
        if event.key.startswith(("aten::", "hpctrain_native::", "Optimizer.step")):
            groups[group_of(event.key)] += event.self_cpu_time_total / 1e6
    steps = -(-len(x) // workload.batch_size)
    top = sorted(events, key=lambda event: -event.self_cpu_time_total)[:TOP]
    return wall, steps, dict(groups), [(event.key, event.self_cpu_time_total / 1e6) for event in top]


def table(model_name: str, wall: float, steps: int, groups: dict[str, float], top: list) -> str:
    lines = [f"{model_name}: one epoch of {steps} steps, {wall * 1e3 / steps:.2f} ms/step under the profiler",
             "part                      ms/step   share of the epoch"]
    accounted = 0.0
    for group, seconds in sorted(groups.items(), key=lambda item: -item[1]):
        accounted += seconds
        lines.append(f"{group:<25} {seconds * 1e3 / steps:8.2f}   {seconds / wall:6.1%}")
    rest = max(wall - accounted, 0.0)
    lines.append(f"{'Python and profiler':<25} {rest * 1e3 / steps:8.2f}   {rest / wall:6.1%}")
    lines.append("top operators by own CPU time, ms/step:")
    lines += [f"  {key[:58]:<58} {seconds * 1e3 / steps:7.2f}" for key, seconds in top]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="convnet,custom_layer")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here")
    args = parser.parse_args(argv)
    command = "benchmarks/profile_keras_models.py " + " ".join(argv if argv is not None else sys.argv[1:])
    parts = [f"command: {command}", f"threads: {args.threads}"]
    for name in args.models.split(","):
        parts.append(table(name, *profile(name, args.threads)))
    text = "\n\n".join(parts)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
