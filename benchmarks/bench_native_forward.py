"""hpctrain's native forward for Keras models against Keras's own call, in one process, interleaved.

    .venv/bin/python benchmarks/bench_native_forward.py --out benchmarks/results/native_forward.json
    .venv/bin/python benchmarks/bench_native_forward.py --rounds 2 --out /tmp/native_forward.json  # quick

Two models of bench_keras_front.py (impl_keras_style.py's code, Adam, categorical cross-entropy):
the Keras MNIST convnet (batch 128) and the custom-layer model (Dense 784-256, two user-written
residual layers, batch 64). Each round trains one epoch per variant, the order rotating per round:

- ``keras_call``: hpctrain's fit as before: the forward through ``model(x, training=...)``, the loss
  Keras's own loss object on the softmax output;
- ``native``: the forward as torch ops (hpctrain.keras.native_forward), the last softmax folded into
  the engine's cross-entropy on the logits;
- ``native_without_rewrites``: as ``native`` but without the native forward's rewrites: Dropout
  through Keras's call (its ``bernoulli_`` mask), ReLU before max pooling, ATen's max pooling
  instead of hpctrain's 2x2 kernels, and user layers through Keras's ``__call__`` rather than at
  their ``call``;
- ``native_nchw_copies`` (convnet): as ``native`` but each move between Keras's NHWC and torch's NCHW
  makes a contiguous copy, the layout alternative the native forward does not take;
- ``torch_handtuned``: impl_torch_handtuned.py's loop (channels-last model and images, fused Adam).

Per-step times are each epoch's wall time (EpochTimer callback / the loop) over its steps; the
medians over rounds and the median of per-round ratios are reported, so a noisy, shared machine
moves both sides of a ratio alike.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import WORKLOADS, make_dataset  # noqa: E402
from impl_keras_style import build_model, import_frontend, make_epoch_timer_class  # noqa: E402
from impl_torch_handtuned import train_one_epoch  # noqa: E402
from torch_common import build_model as build_torch_model  # noqa: E402

MODELS = {"convnet": 1_280, "custom_layer": 2_560}  # samples per timed epoch: 10 and 40 steps


def keras_variants(workload, samples):
    """Per variant a function timing one epoch of hpctrain's fit. Each forward has its own model
    (the same initial weights), its trainer made under that forward: with the native forward the
    softmax folds into the engine's cross-entropy, with Keras's call Keras's loss object runs."""
    from hpctrain.keras import native_forward
    from hpctrain.keras.module import KerasModule

    tf, Sequential, layers, ops, Adam, Callback = import_frontend("hpctrain")
    x, _labels, y = make_dataset(workload)
    x, y = x[:samples], y[:samples]
    timer = make_epoch_timer_class(Callback)()

    def trained(native: bool, rewrites: bool = True):
        tf.keras.utils.set_random_seed(0)
        model = build_model(workload, Sequential, layers, ops)
        # Autograd for every variant: this compares forwards, and a fit would otherwise give the
        # custom layer (read from a traced call) to the static executor, which runs no forward.
        model.compile(optimizer=Adam(learning_rate=workload.learning_rate), loss="categorical_crossentropy",
                      metrics=["accuracy"], plan=tf.make_plan(executor="autograd"))

        def epoch(copies: bool = False):
            KerasModule.uses_native_forward = native
            with (_nchw_copies(native_forward) if copies else contextlib.nullcontext(),
                  contextlib.nullcontext() if rewrites else _without_rewrites(native_forward)):
                model.fit(x, y, epochs=1, batch_size=workload.batch_size, shuffle=True, verbose=0,
                          callbacks=[timer])
            return timer.clock.epoch_seconds[-1]
        return epoch

    native = trained(True)
    variants = {"keras_call": trained(False), "native": native,
                "native_without_rewrites": trained(True, rewrites=False)}
    if workload.model == "convnet":
        variants["native_nchw_copies"] = lambda: native(copies=True)
    return variants


@contextlib.contextmanager
def _nchw_copies(module):
    to_torch, to_keras = module.to_torch_layout, module.to_keras_layout
    module.to_torch_layout = lambda x: to_torch(x).contiguous()
    module.to_keras_layout = lambda x: to_keras(x).contiguous()
    try:
        yield
    finally:
        module.to_torch_layout, module.to_keras_layout = to_torch, to_keras


@contextlib.contextmanager
def _without_rewrites(module):
    """The native forward as built before its rewrites (the forward is built at a model's first
    fit, inside this context, and kept)."""
    saved = module.pool_before_relu, module.draws_engine_mask, module.calls_directly, module.native
    module.pool_before_relu = lambda steps: steps
    module.draws_engine_mask = module.calls_directly = lambda layer: False
    module.native = types.SimpleNamespace(kernels=lambda: None)
    try:
        yield
    finally:
        module.pool_before_relu, module.draws_engine_mask, module.calls_directly, module.native = saved


def layout_comparison(rounds: int, repeats: int = 5) -> dict:
    """The convnet's forward and backward alone (batch 128, training mode, no optimizer), native
    forward with channels-last views against contiguous NCHW copies, interleaved per round."""
    from hpctrain.keras import native_forward
    from hpctrain.keras.module import KerasModule

    workload = WORKLOADS["convnet"]
    _tf, Sequential, layers, ops, _Adam, _Callback = import_frontend("hpctrain")
    module = KerasModule(build_model(workload, Sequential, layers, ops)).train()
    x = torch.from_numpy(make_dataset(dataclasses.replace(workload, num_samples=workload.batch_size))[0])

    def step():
        start = time.perf_counter()
        for _ in range(repeats):
            module(x).sum().backward()
        return (time.perf_counter() - start) / repeats * 1e3

    def with_copies():
        with _nchw_copies(native_forward):
            return step()

    KerasModule.uses_native_forward = True
    times = {"channels_last_views": [], "nchw_copies": []}
    step(), with_copies()  # warm-up
    for _ in range(rounds):
        times["channels_last_views"].append(step())
        times["nchw_copies"].append(with_copies())
    return {"median_ms_forward_backward": {k: statistics.median(v) for k, v in times.items()},
            "median_ratio_copies/views": statistics.median(c / v for c, v in zip(times["nchw_copies"],
                                                                                  times["channels_last_views"])),
            "ms_forward_backward": times}


def torch_variant(workload, samples):
    x, labels, _ = make_dataset(workload)
    x, labels = torch.from_numpy(x[:samples]), torch.from_numpy(labels[:samples])
    model = build_torch_model(workload)
    if x.dim() == 4:
        x = x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=workload.learning_rate, fused=True)

    def epoch():
        start = time.perf_counter()
        loss_sum, _correct = train_one_epoch(model, x, labels, workload.batch_size, optimizer)
        loss_sum.item()
        return time.perf_counter() - start

    return epoch


def measure(name: str, rounds: int) -> dict:
    samples = MODELS[name]
    workload = dataclasses.replace(WORKLOADS[name], num_samples=samples, validation_split=0.0)
    steps = -(-samples // workload.batch_size)
    variants = {**keras_variants(workload, samples), "torch_handtuned": torch_variant(workload, samples)}
    for run in variants.values():  # warm-up: the trainer, its plan, first-call allocations
        run()
    names = list(variants)
    times = {variant: [] for variant in names}
    for round_index in range(rounds):
        for variant in names[round_index % len(names):] + names[:round_index % len(names)]:
            times[variant].append(variants[variant]() / steps * 1e3)
    ratios = {f"{a}/{b}": statistics.median(x / y for x, y in zip(times[a], times[b]))
              for a, b in (("keras_call", "native"), ("native_without_rewrites", "native"), ("native", "torch_handtuned"),
                           ("keras_call", "torch_handtuned"), ("native_nchw_copies", "native"))
              if a in times}
    return {"model": name, "batch_size": workload.batch_size, "steps_per_epoch": steps, "rounds": rounds,
            "median_ms_per_step": {k: statistics.median(v) for k, v in times.items()},
            "ms_per_step": times, "median_ratio": ratios}


def main() -> None:
    from hpctrain.engine import native

    native.build()  # the library with the pooling kernels, as a user's later runs have it
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = {"torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
               "models": [measure(name, args.rounds) for name in args.models]}
    results["torch_threads_after"] = torch.get_num_threads()
    if "convnet" in args.models:
        results["convnet_layouts"] = layout_comparison(3 * args.rounds)
    text = json.dumps(results, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    for model in results["models"]:
        print(model["model"], {k: round(v, 2) for k, v in model["median_ms_per_step"].items()},
              {k: round(v, 2) for k, v in model["median_ratio"].items()})
    if "convnet_layouts" in results:
        layouts = results["convnet_layouts"]
        print("convnet forward+backward", {k: round(v, 2) for k, v in layouts["median_ms_forward_backward"].items()},
              "copies/views", round(layouts["median_ratio_copies/views"], 3))


if __name__ == "__main__":
    main()
