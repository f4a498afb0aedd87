"""Shared pieces of the benchmark implementations.

Each implementation script runs in its own child process and imports this
module for the workload definition, the synthetic data, epoch timing and the
result line it prints. Only numpy and the standard library are used here,
because the same module is imported by the project venv (torch, hpctrain) and
by the TensorFlow venv.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

# The parent process looks for this prefix on the child's stdout, so that any
# other line a framework prints to stdout cannot be mistaken for the result.
RESULT_PREFIX = "BENCH_RESULT "


@dataclass(frozen=True)
class Workload:
    """A classifier: by default dense (input -> hidden ReLU layers -> softmax classes); with
    ``model="convnet"`` the classic Keras MNIST convnet on ``input_shape`` images; with
    ``model="residual"`` a Dense ReLU layer of ``hidden_units[0]`` followed by one user-written
    residual layer (``x + relu(x @ W + b)``) per further entry of ``hidden_units`` (all equal)."""

    name: str
    hidden_units: tuple[int, ...]
    batch_size: int
    input_dim: int = 784
    num_classes: int = 10
    num_samples: int = 60_000
    learning_rate: float = 1e-3
    description: str = ""
    model: str = "mlp"
    input_shape: tuple[int, ...] = ()
    # The last fraction is validated on after every epoch (inside the epoch's time), as fit does.
    validation_split: float = 0.0

    @property
    def train_samples(self) -> int:
        return self.num_samples - int(self.num_samples * self.validation_split)

    @property
    def steps_per_epoch(self) -> int:
        # The last batch may be partial; every implementation still runs it.
        return math.ceil(self.train_samples / self.batch_size)

    @property
    def layer_sizes(self) -> list[int]:
        return [self.input_dim, *self.hidden_units, self.num_classes]

    @property
    def label(self) -> str:
        if self.model == "convnet":
            return "x".join(map(str, self.input_shape)) + " convnet (Conv32-Pool-Conv64-Pool-Dropout-Dense)"
        if self.model == "residual":
            width, blocks = self.hidden_units[0], len(self.hidden_units) - 1
            return f"{self.input_dim}-{width}-{blocks}x(custom residual {width})-{self.num_classes}"
        return "-".join(map(str, self.layer_sizes))


WORKLOADS: dict[str, Workload] = {
    "seed": Workload(
        name="seed",
        hidden_units=(32,),
        batch_size=32,
        description="MLP 784-32-10, batch 32: small layers, so per-step overhead dominates",
    ),
    "mlp1024": Workload(
        name="mlp1024",
        hidden_units=(1024, 1024),
        batch_size=256,
        description="MLP 784-1024-1024-10, batch 256: matmul-bound mid-size model",
    ),
    "convnet": Workload(
        name="convnet",
        hidden_units=(),
        batch_size=128,
        num_samples=10_000,
        model="convnet",
        input_shape=(28, 28, 1),
        validation_split=0.1,
        description="the Keras MNIST convnet (Conv2D 32, MaxPool, Conv2D 64, MaxPool, Flatten, Dropout 0.5, "
        "Dense 10 softmax), batch 128, 10,000 images, validation_split=0.1: convolution-bound",
    ),
    "custom_layer": Workload(
        name="custom_layer",
        hidden_units=(256, 256, 256),
        batch_size=64,
        model="residual",
        description="Dense 784-256 ReLU, two user-written residual layers x + relu(x @ W + b) of width 256 "
        "(a keras.layers.Layer subclass whose call uses keras.ops), Dense 10 softmax, batch 64",
    ),
}


def make_dataset(workload: Workload):
    """Returns (x, labels, y_onehot): deterministic synthetic MNIST-shaped data.

    x is float32 uniform [0, 1), labels are int64 class ids, y_onehot float32.
    The generator call order is fixed so every implementation sees the same data.
    """
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((workload.num_samples, workload.input_dim), dtype=np.float32)
    labels = rng.integers(0, workload.num_classes, workload.num_samples)
    y_onehot = np.eye(workload.num_classes, dtype=np.float32)[labels]
    if workload.input_shape:  # images, channels last as Keras takes them
        x = x.reshape(workload.num_samples, *workload.input_shape)
    return x, labels.astype(np.int64), y_onehot


def physical_core_count() -> int:
    """Physical cores this process may run on (hyperthreads do not help matmuls)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cores = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            physical_id = core_id = None
            for line in cpuinfo:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    physical_id = value.strip()
                elif key == "core id":
                    core_id = value.strip()
                elif not key and core_id is not None:
                    cores.add((physical_id, core_id))
                    physical_id = core_id = None
            if core_id is not None:
                cores.add((physical_id, core_id))
    except OSError:
        pass
    return max(1, min(usable, len(cores))) if cores else max(1, usable)


@dataclass
class EpochClock:
    """Records epoch durations, plus the Unix time at which the first epoch ended.

    The Unix time lets the parent compute start-to-first-epoch latency against
    its own time.time() taken just before it spawned this process.
    """

    epoch_seconds: list[float] = field(default_factory=list)
    first_epoch_end_unix: float | None = None
    _epoch_start: float | None = None

    def begin_epoch(self) -> None:
        self._epoch_start = time.perf_counter()

    def end_epoch(self) -> None:
        self.epoch_seconds.append(time.perf_counter() - self._epoch_start)
        if self.first_epoch_end_unix is None:
            self.first_epoch_end_unix = time.time()


def child_arg_parser(description: str) -> argparse.ArgumentParser:
    """Arguments every implementation accepts; scripts may add their own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="seed")
    parser.add_argument(
        "--epochs", type=int, default=6, help="total epochs to run, warm-up included"
    )
    parser.add_argument(
        "--samples", type=int, default=None, help="train on this many samples instead of the workload's"
    )
    return parser


def selected_workload(args: argparse.Namespace) -> Workload:
    """The workload named by --workload, shrunk to --samples when given (for quick checks)."""
    workload = WORKLOADS[args.workload]
    if args.samples is None:
        return workload
    return replace(workload, num_samples=args.samples)


def emit_result(
    implementation: str,
    workload: Workload,
    clock: EpochClock,
    last_epoch_loss: float | None,
    last_epoch_accuracy: float | None,
    **details,
) -> None:
    """Prints the one result line the parent parses."""
    result = {
        "implementation": implementation,
        "workload": asdict(workload),
        "steps_per_epoch": workload.steps_per_epoch,
        "epoch_seconds": clock.epoch_seconds,
        "first_epoch_end_unix": clock.first_epoch_end_unix,
        # Loss/accuracy are reported so a run can be checked for doing real work.
        "last_epoch_loss": last_epoch_loss,
        "last_epoch_accuracy": last_epoch_accuracy,
        **details,
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def mlp_rounds_arguments(description: str, argv=None):
    """``--workload`` (an MLP workload), ``--rounds`` and ``--output``, for the scripts that run
    variants in turn in one process."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--workload", choices=("seed", "mlp1024"), default="seed")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--output", type=Path, help="also write the table here")
    return parser.parse_args(argv)
