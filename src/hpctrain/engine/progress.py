"""Keras-style progress output: ``Epoch 3/10`` then ``1875/1875 ━━━━ 2s 1ms/step - loss: … - accuracy: …``.

Metric values live on the device; reading them is a host sync, so the live bar refreshes at most
``REFRESH_SECONDS`` apart and otherwise costs one clock read per step.

A front end with a progress bar of its own (Keras's) shows it instead, within :func:`shown_by`:
the passes then print nothing here and hand their running logs to that display, at its own
refresh interval, never each step.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import sys
import time
from typing import Protocol

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


class Display(Protocol):
    """A front end's progress bar, fed by the engine's passes within :func:`shown_by`. Its pass
    begins and ends through the front end's own callbacks; the engine only gives it the running
    logs in between."""

    refresh_seconds: float  # the least time between two refreshes
    refreshes: bool  # whether it shows anything before the pass ends

    def refresh(self, done: int, logs: dict[str, float]) -> None:
        """``done`` steps of the pass are done; ``logs`` are their running means."""


_front_display: contextvars.ContextVar[Display | None] = contextvars.ContextVar("front_display", default=None)


@contextlib.contextmanager
def shown_by(display: Display | None):
    """Passes begun within it show their progress on ``display`` (``None``: this module's own)."""
    token = _front_display.set(display)
    try:
        yield
    finally:
        _front_display.reset(token)


class Progress:
    """One pass's progress line; ``verbose`` 0 silent, 1 live bar, 2 one line at the end.

    Within :func:`shown_by`, the front end's display shows the pass instead and ``verbose`` is
    its business: this object only feeds it.
    """

    def __init__(self, *, verbose: int, total_steps: int | None, stream=None):
        self.verbose = verbose
        self.total_steps = total_steps
        self.stream = stream or sys.stdout
        self.display = _front_display.get()
        self.start = time.perf_counter()
        if self.display is None:
            self.live = verbose == 1 and self.stream.isatty()
            self.refresh_seconds, self.last_refresh = REFRESH_SECONDS, self.start
        else:  # as Keras's bar does, the first step shows at once
            self.live = self.display.refreshes
            self.refresh_seconds, self.last_refresh = self.display.refresh_seconds, -math.inf
        self.done = 0  # steps so far: the total of a pass whose length was not known beforehand

    def step(self, done: int, read_logs) -> None:
        """Called after each step (or run of steps); ``read_logs()`` syncs, so it is called only on refresh."""
        self.done = done
        if not self.live:
            return
        now = time.perf_counter()
        if now - self.last_refresh < self.refresh_seconds:
            return
        self.last_refresh = now
        if self.display is not None:
            self.display.refresh(done, read_logs())
            return
        self.stream.write("\r" + self._line(done, read_logs(), now) + "\x1b[K")
        self.stream.flush()

    def finish(self, done: int, logs: dict[str, float]) -> None:
        """The pass's last line; a front end's display prints its own, from its callbacks."""
        if self.verbose == 0 or self.display is not None:
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
