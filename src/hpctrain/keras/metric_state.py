"""Keras's metric objects left holding what Keras's own ``fit``/``evaluate`` would leave.

After Keras's fit, ``model.metrics`` (the loss tracker and the compiled metrics) hold the last
pass's state: the last validation pass where there was one, else the last epoch's training.
The engine computes those values itself; this writes them into the Keras objects that are
running means (``Mean`` and ``MeanMetricWrapper``, which every accuracy and error metric is):
``total = value * rows`` and ``count = rows``, so ``result()`` and ``get_metrics_result()``
give Keras's numbers and a later update continues from the same weight.
"""

from __future__ import annotations

import math

import keras


def _running_means(model) -> list:
    tracked = [model._loss_tracker] if getattr(model, "_loss_tracker", None) is not None else []
    compiled = getattr(model, "_compile_metrics", None)
    if compiled is not None and compiled.built:
        tracked += list(compiled.metrics)
    return [m for m in tracked if isinstance(m, keras.metrics.Mean) and len(m.variables) == 2]


def write_results(model, logs: dict, rows: int, prefix: str = "") -> None:
    """``logs``: the pass's results by name (``prefix`` + name); ``rows``: the samples it saw."""
    for metric in _running_means(model):
        value = logs.get(prefix + metric.name)
        if value is None or rows <= 0 or not math.isfinite(value):
            continue
        total, count = metric.variables
        total.assign(value * rows)
        count.assign(rows)
