"""One call of the benchmarks' user-written residual layer, three ways, on a (64, 256) batch.

- ``keras_call``: ``layer(x)``, through Keras's ``Layer.__call__`` (input conversion, call context,
  name scope, masks), as Keras runs it and as hpctrain ran it before calling user leaf layers
  directly;
- ``call``: ``layer.call(x)``, what hpctrain's native forward calls (keras.ops on torch tensors);
- ``torch``: the same arithmetic as torch ops, ``x + relu(addmm(b, x, W))``.

Best of 5 repeats of 2,000 calls each, forward only (autograd recording, each graph dropped), two
threads.

    .venv/bin/python benchmarks/bench_layer_call.py [--output FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from impl_keras_style import import_frontend, residual_layer_class  # noqa: E402


def best_us(call, calls: int = 2_000, repeats: int = 5) -> float:
    for _ in range(100):
        call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    _tf, _Sequential, layers, ops, _Adam, _Callback = import_frontend("hpctrain")
    layer = residual_layer_class(layers, ops)()
    x = torch.randn(64, 256)
    layer(x)  # builds it
    kernel, bias = layer.kernel.value, layer.bias.value
    # With autograd recording, as in training (the weights require gradients); each graph dropped.
    results = {"keras_call": best_us(lambda: layer(x)), "call": best_us(lambda: layer.call(x)),
               "torch": best_us(lambda: x + torch.relu(torch.addmm(bias, x, kernel)))}
    text = "\n".join(["residual layer x + relu(x @ W + b), batch (64, 256), best us per call "
                      "(command: .venv/bin/python benchmarks/bench_layer_call.py)",
                      *(f"{name:<12} {us:8.1f}" for name, us in results.items())])
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
