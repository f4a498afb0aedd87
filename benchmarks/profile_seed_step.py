"""Where one training step of an MLP workload spends its time, as hpctrain's fit runs it.

Trains the workload's MLP with the Keras front end (seed: 784-32-10, Adam, batch 32; mlp1024:
784-1024-1024-10, batch 256; 60,000 rows) for two warm-up epochs, then profiles one epoch with ``torch.profiler`` and prints each operator's self
CPU time per step, beside the epoch's wall time per step. The profiler adds ~1-2 us per call,
so the rows sum to more than an unprofiled step; the ranking is what this is for.

    .venv/bin/python benchmarks/profile_seed_step.py [--workload mlp1024] [--rows 25] [--output FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import WORKLOADS, make_dataset  # noqa: E402
from reporting import print_and_save  # noqa: E402
from torch_common import hpctrain_mlp  # noqa: E402


class EpochTimes:
    """A Keras callback that keeps each epoch's wall time."""

    def __init__(self):
        self.seconds = []

    def attach(self, tf):
        times = self

        class Callback(tf.keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                times.seconds.append(time.perf_counter() - self.start)

        return Callback()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=[name for name, w in WORKLOADS.items() if w.model == "mlp"],
                        default="seed")
    parser.add_argument("--rows", type=int, default=25, help="operators to list")
    parser.add_argument("--output", type=Path, help="also write the table here")
    args = parser.parse_args()

    import hpctrain as tf

    workload = WORKLOADS[args.workload]
    x, _, y = make_dataset(workload)
    model = hpctrain_mlp(workload)
    times = EpochTimes()
    model.fit(x, y, batch_size=workload.batch_size, epochs=2, verbose=0, callbacks=[times.attach(tf)])
    steps = -(-len(x) // workload.batch_size)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        model.fit(x, y, batch_size=workload.batch_size, epochs=1, verbose=0, callbacks=[times.attach(tf)])
    lines = [f"{workload.name} workload, {steps} steps per epoch; plan: executor={model.plan.executor}, "
             f"threads={model.plan.threads}",
             "unprofiled epochs: " + ", ".join(f"{s / steps * 1e6:.0f}" for s in times.seconds[:2]) + " us/step; "
             f"profiled epoch: {times.seconds[2] / steps * 1e6:.0f} us/step",
             f"{'operator':48s} {'calls/step':>10s} {'self us/step':>12s}"]
    events = sorted(profile.key_averages(), key=lambda e: -e.self_cpu_time_total)
    for event in events[:args.rows]:
        lines.append(f"{event.key[:48]:48s} {event.count / steps:10.2f} {event.self_cpu_time_total / steps:12.1f}")
    total = sum(e.self_cpu_time_total for e in events) / steps
    lines.append(f"{'all operators':48s} {'':10s} {total:12.1f}")
    print_and_save("\n".join(lines), args.output)


if __name__ == "__main__":
    main()
