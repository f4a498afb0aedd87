"""Per-step time on a GPU, in one process: hpctrain (static steps, the same replayed as CUDA graphs,
autograd) against hand-tuned eager PyTorch.

    python benchmarks/bench_gpu.py [--epochs 4] [--output results/gpu.json]

Skips (exit 0, a printed note) where no CUDA GPU is visible. Each implementation trains the same
workload on the same resident data; epoch times come from torch.cuda.synchronize() at each epoch
boundary, so they include every kernel of the epoch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import WORKLOADS, make_dataset  # noqa: E402
from torch_common import build_mlp  # noqa: E402


def epoch_times_hpctrain(workload, x, labels, epochs: int, eager: bool, cuda_graph: bool = False) -> list[float]:
    import hpctrain as tf
    from hpctrain.keras.callbacks import Callback
    from hpctrain.keras.layers import Dense
    from hpctrain.keras.models import Sequential
    from hpctrain.keras.optimizers import Adam

    times = []

    class EpochTimer(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            torch.cuda.synchronize()
            times.append(time.perf_counter() - self.start)

    tf.keras.utils.set_random_seed(0)
    hidden = [Dense(units, activation="relu") for units in workload.hidden_units]
    model = Sequential([tf.keras.Input(shape=(workload.input_dim,)), *hidden,
                        Dense(workload.num_classes, activation="softmax")])
    model.compile(optimizer=Adam(workload.learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], run_eagerly=eager, plan=tf.make_plan(cuda_graph=cuda_graph))
    model.fit(x, labels, epochs=epochs, batch_size=workload.batch_size, verbose=0, callbacks=[EpochTimer()])
    print(model.plan.explain(), file=sys.stderr)
    return times


def epoch_times_eager_torch(workload, x, labels, epochs: int) -> list[float]:
    """Hand-tuned eager PyTorch on the GPU: resident data, index gather, fused Adam, no per-step sync."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build_mlp(workload).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=workload.learning_rate, fused=True)
    data, targets = torch.from_numpy(x).to(device), torch.from_numpy(labels).to(device)
    times = []
    for _ in range(epochs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        order = torch.randperm(len(data), device=device)
        for begin in range(0, len(data), workload.batch_size):
            index = order[begin:begin + workload.batch_size]
            xb, yb = data[index], targets[index]
            logits = model(xb)
            loss = torch.nn.functional.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(index)
            correct += (logits.argmax(1) == yb).sum()
        float(loss_sum), int(correct)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def summarize(times: list[float], steps: int) -> dict:
    timed = times[1:] or times
    median = statistics.median(timed)
    return {"epoch_seconds": times, "median_epoch_s": median, "min_epoch_s": min(timed),
            "us_per_step": median / steps * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "gpu.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU visible: GPU benchmark skipped")
        return 0
    results = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "command": " ".join(sys.argv),
               "workloads": {}}
    for workload in (w for w in WORKLOADS.values() if w.model == "mlp"):
        x, labels, _ = make_dataset(workload)
        rows = {
            "hpctrain": epoch_times_hpctrain(workload, x, labels, args.epochs, eager=False),
            "hpctrain_cuda_graph": epoch_times_hpctrain(workload, x, labels, args.epochs, eager=False,
                                                        cuda_graph=True),
            "hpctrain_autograd": epoch_times_hpctrain(workload, x, labels, args.epochs, eager=True),
            "torch_eager_handtuned": epoch_times_eager_torch(workload, x, labels, args.epochs),
        }
        results["workloads"][workload.name] = {name: summarize(t, workload.steps_per_epoch) for name, t in rows.items()}
    print(f"| workload | implementation | median epoch s | us/step |  ({results['gpu']}, torch {results['torch']})")
    print("|---|---|---:|---:|")
    for name, rows in results["workloads"].items():
        for implementation, row in rows.items():
            print(f"| {name} | {implementation} | {row['median_epoch_s']:.3f} | {row['us_per_step']:.1f} |")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
