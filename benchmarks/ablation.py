"""What the two ablation scripts share: the model they train, the rounds of variants taking
turns, and the table of each part's cost (the median over rounds of full step - variant)."""

from __future__ import annotations

import math
import statistics
import time

from common import make_dataset
from torch_common import hpctrain_mlp


def train_variants(workload, variants: dict, apply_variant, rounds: int, *, threads: int = 2,
                   clock=time.perf_counter):
    """``(measured, model)``: per variant, its µs per step in each round, one fit of 2 epochs per
    round (the faster kept) after ``apply_variant(*variants[name])``, NaN where the fit diverged
    at once; and the model trained. ``clock``: wall time, or ``time.process_time`` (CPU time: on
    one thread, this process's work however many others share the cores)."""
    import hpctrain as tf
    from hpctrain.errors import NonFiniteLossError
    from hpctrain.keras.callbacks import Callback

    x, _, y = make_dataset(workload)
    steps = -(-len(x) // workload.batch_size)
    # A fixed thread count: a variant must not move the thread count the others run on.
    model = hpctrain_mlp(workload, plan=tf.make_plan(threads=threads))
    apply_variant(*next(iter(variants.values())))
    model.fit(x, y, batch_size=workload.batch_size, epochs=1, verbose=0)
    times = []

    class EpochTimes(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = clock()

        def on_epoch_end(self, epoch, logs=None):
            times.append((clock() - self.start) / steps * 1e6)

    measured = {name: [] for name in variants}
    for _ in range(rounds):
        for name, variant in variants.items():
            apply_variant(*variant)
            times.clear()
            try:
                model.fit(x, y, batch_size=workload.batch_size, epochs=2, verbose=0, callbacks=[EpochTimes()])
            except NonFiniteLossError:  # a variant without the gradient may diverge: its times stand
                pass
            measured[name].append(min(times) if times else float("nan"))
    return measured, model


def parts_table(title: str, measured: dict[str, list[float]], full: str = "full step") -> list[str]:
    lines = [title, f"{'variant':56s} {'median us/step':>14s} {'part us/step':>13s}"]
    for name, values in measured.items():
        pairs = [(f, v) for f, v in zip(measured[full], values) if math.isfinite(v)]
        if not pairs:  # every fit of this variant diverged before an epoch ended
            lines.append(f"{name:56s} {'diverged':>14s} {'-':>13s}")
            continue
        part = statistics.median(f - v for f, v in pairs) if name != full else 0.0
        lines.append(f"{name:56s} {statistics.median(v for _, v in pairs):14.1f} {part:13.1f}")
    return lines
