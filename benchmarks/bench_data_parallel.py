"""Data-parallel scaling on this machine: samples per second with 1 and 2 replicas (and more with
``--replicas``), each replica a process started by ``hpctrain launch``.

    .venv/bin/python benchmarks/bench_data_parallel.py --workload seed --epochs 4
    .venv/bin/python benchmarks/bench_data_parallel.py --workload mlp1024 --epochs 3
    .venv/bin/python benchmarks/bench_data_parallel.py --workload seed --epochs 2 --sync allreduce,ddp,fsdp

``--sync`` picks how the replicas' gradients meet: ``engine`` (default) trains as the engine chooses
(for these MLPs, the static executor and its one flat all-reduce per step); the others run the
autograd executor (``run_eagerly=True``) with ``DistributedDataParallel`` (``ddp``, bucketed and
overlapped with the backward), the former single all-reduce after the backward (``allreduce``), or
FSDP2's sharded weights (``fsdp``).

Scaling efficiency = samples/s with N replicas / (N x samples/s with one). The global batch is the
workload's batch (Keras semantics: split across the replicas), so N replicas do the same
arithmetic as one, plus one gradient all-reduce per step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import RESULT_PREFIX, WORKLOADS  # noqa: E402
from hpctrain.distribute.spawn import free_local_port as free_port  # noqa: E402

REPLICA_PROGRAM = '''
import json, sys, time
sys.path.insert(0, {here!r})
import hpctrain as tf
from common import WORKLOADS, make_dataset
from hpctrain.keras.callbacks import Callback
from hpctrain.keras.layers import Dense
from hpctrain.keras.models import Sequential
from hpctrain.keras.optimizers import Adam

workload, epochs, sync = WORKLOADS[sys.argv[1]], int(sys.argv[2]), sys.argv[3]
x, labels, _ = make_dataset(workload)
times = []

class EpochTimer(Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        times.append(time.perf_counter() - self.start)

strategy = tf.distribute.MirroredStrategy(sharding="fsdp" if sync == "fsdp" else None)
if sync == "allreduce" and strategy.plan().communicator is not None:
    import dataclasses

    class WithoutDDP:
        """The communicator without data_parallel: the step then sums the gradients itself."""
        def __init__(self, inner):
            self.inner = inner
        def __getattr__(self, name):
            if name == "data_parallel":
                raise AttributeError(name)
            return getattr(self.inner, name)

    strategy._plan = dataclasses.replace(strategy.plan(), communicator=WithoutDDP(strategy.plan().communicator))
with strategy.scope():
    tf.keras.utils.set_random_seed(0)
    model = Sequential([tf.keras.Input(shape=(workload.input_dim,)),
                        *[Dense(units, activation="relu") for units in workload.hidden_units],
                        Dense(workload.num_classes, activation="softmax")])
    model.compile(optimizer=Adam(workload.learning_rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  run_eagerly=sync != "engine")
model.fit(x, labels, epochs=epochs, batch_size=workload.batch_size, verbose=0, callbacks=[EpochTimer()])
if strategy.plan().rank == 0:
    print({prefix!r} + json.dumps({{"epoch_seconds": times, "plan": model.plan.explain()}}), flush=True)
'''


def run_replicas(python: str, replicas: int, workload: str, epochs: int, program: Path, sync: str) -> dict:
    command = [python, "-m", "hpctrain.cli", "launch", f"--nproc-per-node={replicas}", f"--master-port={free_port()}",
               str(program), workload, str(epochs), sync]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"{replicas} replicas failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return json.loads(lines[0][len(RESULT_PREFIX):])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(name for name, w in WORKLOADS.items() if w.model == "mlp"),
                        default="seed")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run; the first is not counted")
    parser.add_argument("--replicas", default="1,2", help="comma-separated replica counts")
    parser.add_argument("--sync", default="engine",
                        help="comma-separated: engine, ddp, allreduce, fsdp (see the module's docstring)")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--output", default=None, help="JSON path (default results/data_parallel_<workload>.json)")
    args = parser.parse_args()
    workload = WORKLOADS[args.workload]
    program = HERE / "results" / ".replica_program.py"
    program.write_text(REPLICA_PROGRAM.format(here=str(HERE), prefix=RESULT_PREFIX))
    syncs = args.sync.split(",")
    rows, ran_alone = {}, set()
    try:
        for sync in syncs:
            for replicas in [int(n) for n in args.replicas.split(",")]:
                executor = "engine" if sync == "engine" else "autograd"
                if replicas == 1 and executor in ran_alone:
                    continue  # one replica syncs nothing: the autograd syncs share one such run
                if replicas == 1:
                    ran_alone.add(executor)
                outcome = run_replicas(args.python, replicas, args.workload, args.epochs, program, sync)
                median = statistics.median(outcome["epoch_seconds"][1:])
                rows[_key(replicas, sync, syncs)] = {
                    "replicas": replicas, "sync": sync, "epoch_seconds": outcome["epoch_seconds"],
                    "median_epoch_s": median, "samples_per_second": workload.num_samples / median,
                    "plan": outcome["plan"]}
    finally:
        program.unlink(missing_ok=True)
    print(f"| replicas | sync | median epoch s | samples/s | scaling efficiency |  ({args.workload})")
    print("|---:|---|---:|---:|---:|")
    for key, row in rows.items():
        # Against one replica on the same executor (the autograd runs share one single-replica run).
        single = [r for r in rows.values() if r["replicas"] == 1 and (r["sync"] == "engine") == (row["sync"] == "engine")]
        base = single[0]["samples_per_second"] if single else float("nan")
        row["efficiency"] = row["samples_per_second"] / (row["replicas"] * base)
        print(f"| {row['replicas']} | {row['sync']} | {row['median_epoch_s']:.3f} | {row['samples_per_second']:,.0f} "
              f"| {row['efficiency']:.2f} |")
    output = Path(args.output or HERE / "results" / f"data_parallel_{args.workload}.json")
    output.write_text(json.dumps({"command": " ".join(sys.argv), "workload": args.workload,
                                  "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows}, indent=2))
    return 0


def _key(replicas: int, sync: str, syncs: list[str]) -> str:
    """The row's name: the replica count alone for the default run (as earlier results name them)."""
    return str(replicas) if syncs == ["engine"] else f"{replicas}/{sync}"


if __name__ == "__main__":
    sys.exit(main())
