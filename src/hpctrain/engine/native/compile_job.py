"""Builds the C++ step loop with ``torch.utils.cpp_extension.load``: run as a script, in a process of
its own, by ``native.build_in_background``, or called by ``native.build``.

A process, not a thread: a short training program exits before the build would end, and a thread
would die with it, leaving no library. Imports nothing of hpctrain (the parent passes ``load``'s
arguments), so it runs where the parent's ``sys.path`` is not the default.

    python compile_job.py '{"load": {...}, "failure": PATH}'
"""

from __future__ import annotations

import json
import os
import sys
import time

# cpp_extension's lock is a file, left behind where a build was killed; a later build would wait
# for it forever. A build takes well under this.
STALE_LOCK_SECONDS = 600


def load_or_record_failure(arguments: dict, failure: str) -> bool:
    """``cpp_extension.load(**arguments)`` (builds where needed, then loads the library into this
    process); where it fails, writes the builder's message to ``failure``."""
    from torch.utils.cpp_extension import load

    lock = os.path.join(arguments["build_directory"], "lock")
    try:
        if time.time() - os.path.getmtime(lock) > STALE_LOCK_SECONDS:
            os.unlink(lock)
    except OSError:
        pass
    try:
        load(**arguments)
        return True
    except Exception as error:  # the builder raises RuntimeError, OSError, CalledProcessError...
        os.makedirs(os.path.dirname(failure), exist_ok=True)
        with open(failure, "w") as f:
            f.write(error_summary(error))
        return False


def error_summary(error: Exception) -> str:
    """The builder's message, its telling line (the compiler's first error) last."""
    text = str(error).strip() or type(error).__name__
    lines = text.splitlines()
    telling = next((line for line in lines if "error" in line.lower() and "Error building extension" not in line),
                   lines[-1])
    return "\n".join(lines[-60:] + [telling.strip()])


def yield_to_training() -> None:
    """Run only on CPU time nothing else wants: the build starts when a fit ends, but the program
    (or another) may train again while it runs. Even so it costs a two-thread fit beside it a lot
    (measured: ~8x slower niced, ~6x at idle priority, through the shared cores' caches and
    wake-ups), which is why it is not started while a fit trains."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


if __name__ == "__main__":
    yield_to_training()
    spec = json.loads(sys.argv[1])
    sys.exit(0 if load_or_record_failure(spec["load"], spec["failure"]) else 1)
