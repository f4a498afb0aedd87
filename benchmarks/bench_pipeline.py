"""Pipeline parallelism on this machine: samples per second and per-process peak memory (RSS) for
1, 2 and 4 stages of the MLP 784→W→W→W→10 (W=1024 by default), each stage a process started by
``hpctrain launch``.

    .venv/bin/python benchmarks/bench_pipeline.py --stages 1,2,4 --epochs 3
    .venv/bin/python benchmarks/bench_pipeline.py --width 4096 --samples 2048 --epochs 3

One stage is the plain single-process fit (no strategy). Every run trains the same model on the same
synthetic data with the same global batch and Adam; the pipelined runs use 1F1B with
``--microbatches`` micro-batches. Each process reports its peak resident memory (``ru_maxrss``) and
its resident memory before the model was built (the interpreter, torch and the data set), so the
part that the model, its gradients, its optimizer state and its activations add can be read apart.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from hpctrain.distribute.spawn import free_local_port  # noqa: E402

STAGE_PROGRAM = '''
import json, resource, sys
sys.path.insert(0, {here!r})
import numpy as np
import hpctrain as tf
from hpctrain.keras.callbacks import Callback
from impl_keras_style import make_epoch_timer_class
from hpctrain.keras.layers import Dense
from hpctrain.keras.models import Sequential
from hpctrain.keras.optimizers import Adam

stages, microbatches, epochs, samples, batch, width = map(int, sys.argv[1:7])
folder = sys.argv[7]
if stages > 1:
    import torch.distributed.pipelining  # noqa: F401  (library memory counts as "before the model")
rng = np.random.default_rng(0)
x = rng.random((samples, 784), dtype=np.float32)
y = rng.integers(0, 10, samples)
def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
before_model = rss_mib()
timer = make_epoch_timer_class(Callback)()

strategy = tf.distribute.PipelineStrategy(stages=stages, microbatches=microbatches) if stages > 1 else None
with strategy.scope() if strategy else open("/dev/null"):
    tf.keras.utils.set_random_seed(0)
    model = Sequential([Dense(width, activation="relu", input_dim=784), Dense(width, activation="relu"),
                        Dense(width, activation="relu"), Dense(10, activation="softmax")])
    model.compile(optimizer=Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
history = model.fit(x, y, epochs=epochs, batch_size=batch, verbose=0, callbacks=[timer])
rank = strategy.plan().rank if strategy else 0
report = {{"rank": rank, "epoch_seconds": timer.clock.epoch_seconds, "rss_before_model_mib": before_model,
          "peak_rss_mib": rss_mib(),
          "loss": history.history["loss"], "plan": model.plan.explain()}}
if strategy and rank == 0:
    report["describe"] = strategy.describe()
with open(f"{{folder}}/rank{{rank}}.json", "w") as f:  # one file each: the ranks' stdout lines interleave
    json.dump(report, f)
'''


def run(python: str, program: Path, stages: int, args) -> list:
    folder = tempfile.mkdtemp(prefix="bench-pipeline-")
    arguments = [str(program), *(str(v) for v in (stages, args.microbatches, args.epochs, args.samples,
                                                     args.batch_size, args.width)), folder]
    if stages == 1:
        command = [python, *arguments]
    else:
        command = [python, "-m", "hpctrain.cli", "launch", f"--nproc-per-node={stages}",
                   f"--master-port={free_local_port()}", *arguments]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(f"{stages} stages failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    reports = [json.loads(Path(folder, f"rank{rank}.json").read_text()) for rank in range(stages)]
    shutil.rmtree(folder)
    return reports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="1,2,4", help="comma-separated stage counts (1: one plain process)")
    parser.add_argument("--microbatches", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is not counted")
    parser.add_argument("--samples", type=int, default=10_240)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=int, default=1024, help="units of each of the three hidden layers")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--output", default=None, help="JSON path (default results/pipeline_mlp<width>x3.json)")
    args = parser.parse_args()
    program = HERE / "results" / ".stage_program.py"
    program.write_text(STAGE_PROGRAM.format(here=str(HERE)))
    rows = {}
    try:
        for stages in [int(n) for n in args.stages.split(",")]:
            reports = run(args.python, program, stages, args)
            median = statistics.median(reports[0]["epoch_seconds"][1:])
            rows[stages] = {"median_epoch_s": median, "samples_per_second": args.samples / median,
                            "peak_rss_mib_per_process": [r["peak_rss_mib"] for r in reports],
                            "rss_before_model_mib_per_process": [r["rss_before_model_mib"] for r in reports],
                            "processes": reports}
    finally:
        program.unlink(missing_ok=True)
    print("| stages | samples/s | peak RSS per process (MiB) | of which before the model (MiB) |")
    print("|---:|---:|---|---|")
    for stages, row in rows.items():
        peaks = ", ".join(f"{v:.0f}" for v in row["peak_rss_mib_per_process"])
        before = ", ".join(f"{v:.0f}" for v in row["rss_before_model_mib_per_process"])
        print(f"| {stages} | {row['samples_per_second']:,.0f} | {peaks} | {before} |")
    output = Path(args.output or HERE / "results" / f"pipeline_mlp{args.width}x3.json")
    output.write_text(json.dumps({
        "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "model": f"MLP 784-{args.width}-{args.width}-{args.width}-10, Adam, sparse categorical cross-entropy",
        "samples": args.samples, "batch_size": args.batch_size, "microbatches": args.microbatches,
        "schedule": "1f1b", "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
