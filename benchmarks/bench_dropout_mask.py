"""Drawing a dropout mask for the Keras MNIST convnet's 128 x 1,600 activations, three ways, on
the CPU, two threads:

- ``bernoulli``: ``torch.empty(...).bernoulli_(1 - rate)``, what ``F.dropout`` draws;
- ``float_uniform``: ``torch.rand(...) >= rate``, one float32 uniform (one 32-bit draw) per value,
  the engine's mask before;
- ``levels_15bit``: the engine's mask (``hpctrain.engine.dropout.scaled_keep_mask``), two 15-bit
  levels from each 32-bit draw of ``random_``.

torch's CPU generator draws one value at a time, so the number of draws sets the time. Median and
best of 7 repeats of 200 masks, each scaled by ``1 / (1 - rate)``.

    .venv/bin/python benchmarks/bench_dropout_mask.py [--output FILE]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hpctrain.engine.dropout import scaled_keep_mask

SHAPE, RATE = (128, 1600), 0.5


def masks():
    like = torch.empty(SHAPE)
    scale = 1.0 / (1.0 - RATE)
    return {
        "bernoulli": lambda: torch.empty(SHAPE).bernoulli_(1 - RATE).mul_(scale),
        "float_uniform": lambda: torch.rand(SHAPE).ge_(RATE).mul_(scale),
        "levels_15bit": lambda: scaled_keep_mask(like, RATE),
    }


def per_mask_us(draw, count: int = 200, repeats: int = 7) -> list[float]:
    for _ in range(20):
        draw()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(count):
            draw()
        times.append((time.perf_counter() - start) / count * 1e6)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", help="also write the table here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    lines = [f"dropout mask for {SHAPE[0]}x{SHAPE[1]} activations, rate {RATE}, torch {torch.__version__}",
             f"{'mask':<15} {'median us':>10} {'best us':>10}"]
    for name, draw in masks().items():
        times = per_mask_us(draw)
        lines.append(f"{name:<15} {statistics.median(times):10.0f} {min(times):10.0f}")
    text = "\n".join(lines)
    print(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(f"command: .venv/bin/python benchmarks/bench_dropout_mask.py --output {args.output}\n{text}\n")


if __name__ == "__main__":
    main()
