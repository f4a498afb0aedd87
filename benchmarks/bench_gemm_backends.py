"""MKL's ``torch.mm`` against oneDNN's matmul, per product size, as the static step calls them.

For each product ``(m x k) @ (k x n)``: ``torch.mm(a, b, out=o)`` (MKL) against
``o.copy_(torch.ops.mkldnn._linear_pointwise(a, b.t(), None, "none", [], ""))`` (oneDNN, whose
result is a new tensor, copied into place as the step does). Fastest of several timed calls each,
on the threads PyTorch has. The rule in ``hpctrain/hardware/gemm.py`` (oneDNN from
``ONEDNN_MIN_MACS`` multiply-adds) comes from this table.

    .venv/bin/python benchmarks/bench_gemm_backends.py [--output benchmarks/results/gemm_backends.txt]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from reporting import print_and_save  # noqa: E402

# The seed MLP's, the mid-size MLP's and sizes between, where the two cross.
SHAPES = [(32, 785, 32), (32, 33, 10), (64, 785, 32), (128, 128, 128), (128, 785, 32), (256, 256, 64),
          (128, 785, 128), (256, 785, 128), (256, 1025, 10), (64, 1025, 1024), (256, 785, 1024), (256, 1025, 1024)]


def best_microseconds(call, repeats: int) -> float:
    for _ in range(3):
        call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best * 1e6


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    onednn = torch.ops.mkldnn._linear_pointwise
    lines = [f"torch {torch.__version__}, {torch.get_num_threads()} threads; fastest call, microseconds",
             f"{'m x k x n':>18s} {'M MACs':>8s} {'MKL':>9s} {'oneDNN+copy':>12s} {'ratio':>6s}"]
    for rows, inner, cols in SHAPES:
        a, b, out = torch.randn(rows, inner), torch.randn(inner, cols) * 0.03, torch.empty(rows, cols)
        weight = b.t()
        repeats = max(20, int(2e7 / (rows * inner * cols)))
        mkl = best_microseconds(lambda: torch.mm(a, b, out=out), repeats)
        dnn = best_microseconds(lambda: out.copy_(onednn(a, weight, None, "none", [], "")), repeats)
        lines.append(f"{f'{rows} x {inner} x {cols}':>18s} {rows * inner * cols / 1e6:8.2f} {mkl:9.1f} {dnn:12.1f} "
                     f"{dnn / mkl:6.2f}")
    print_and_save("\n".join(lines), args.output)


if __name__ == "__main__":
    main()
