"""Keras-style progress output: ``Epoch 3/10`` then ``1875/1875 ━━━━ 2s 1ms/step - loss: … - accuracy: …``.

Metric values live on the device; reading them is a host sync, so the live bar refreshes at most
``REFRESH_SECONDS`` apart and otherwise costs one clock read per step.
"""

from __future__ import annotations

import sys
import time

REFRESH_SECONDS = 0.5
BAR_WIDTH = 20


def format_logs(logs: dict[str, float]) -> str:
    return " - ".join(f"{key}: {_format_value(value)}" for key, value in logs.items())


def _format_value(value: float) -> str:
    return f"{value:.4e}" if value != 0 and abs(value) < 1e-3 else f"{value:.4f}"


def _format_time_per_step(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.0f}s/step"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.0f}ms/step"
    return f"{seconds * 1e6:.0f}us/step"


class Progress:
    """One pass's progress line; ``verbose`` 0 silent, 1 live bar, 2 one line at the end."""

    def __init__(self, *, verbose: int, total_steps: int | None, stream=None):
        self.verbose = verbose
        self.total_steps = total_steps
        self.stream = stream or sys.stdout
        self.live = verbose == 1 and self.stream.isatty()
        self.start = time.perf_counter()
        self.last_refresh = self.start
        self.done = 0  # steps so far: the total of a pass whose length was not known beforehand

    def step(self, done: int, read_logs) -> None:
        """Called after each step; ``read_logs()`` syncs, so it is called only on refresh."""
        self.done = done
        if not self.live:
            return
        now = time.perf_counter()
        if now - self.last_refresh < REFRESH_SECONDS:
            return
        self.last_refresh = now
        self.stream.write("\r" + self._line(done, read_logs(), now) + "\x1b[K")
        self.stream.flush()

    def finish(self, done: int, logs: dict[str, float]) -> None:
        if self.verbose == 0:
            return
        line = self._line(self.done if done is None else done, logs, time.perf_counter())
        self.stream.write(("\r" + line + "\x1b[K\n") if self.live else line + "\n")
        self.stream.flush()

    def _line(self, done: int, logs: dict, now: float) -> str:
        elapsed = now - self.start
        total = self.total_steps or done
        per_step = _format_time_per_step(elapsed / max(done, 1))
        metrics = (" - " + format_logs(logs)) if logs else ""
        if self.verbose == 2:
            return f"{total}/{total} - {elapsed:.0f}s - {per_step}{metrics}"
        filled = BAR_WIDTH if not total else int(BAR_WIDTH * done / total)
        bar = "━" * filled + ("\x1b[2m" + "━" * (BAR_WIDTH - filled) + "\x1b[0m" if filled < BAR_WIDTH else "")
        return f"{done}/{total} {bar} {elapsed:.0f}s {per_step}{metrics}"
