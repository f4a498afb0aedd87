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
# for it forever. Each build here writes its process id next to it: a lock whose builder is gone is
# removed. A lock with no builder named is given this long.
STALE_LOCK_SECONDS = 600


def load_or_record_failure(arguments: dict, failure: str) -> bool:
    """``cpp_extension.load(**arguments)`` (builds where needed, then loads the library into this
    process); where it fails, writes the builder's message to ``failure``."""
    from torch.utils.cpp_extension import load

    directory = arguments["build_directory"]
    _wait_for_another_build(os.path.join(directory, "lock"), os.path.join(directory, "builder"))
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "builder"), "w") as f:
        f.write(str(os.getpid()))
    try:
        load(**arguments)
        return True
    except Exception as error:  # the builder raises RuntimeError, OSError, CalledProcessError...
        with open(failure, "w") as f:
            f.write(error_summary(error))
        return False
    finally:
        try:
            os.unlink(os.path.join(directory, "builder"))
        except OSError:
            pass


def build_running(directory: str) -> bool:
    """Whether a process is building in ``directory`` now (holds cpp_extension's lock, alive)."""
    lock = os.path.join(directory, "lock")
    return os.path.exists(lock) and _builder_alive(lock, os.path.join(directory, "builder"))


def _wait_for_another_build(lock: str, builder: str) -> None:
    """Waits while another process builds (``load`` would too), but not for a lock whose builder is
    gone, which ``load`` would wait for forever: that one is removed."""
    while os.path.exists(lock):
        if not _builder_alive(lock, builder):
            try:
                os.unlink(lock)
            except OSError:
                pass
            return
        time.sleep(0.2)


def _builder_alive(lock: str, builder: str) -> bool:
    try:
        with open(builder) as f:
            os.kill(int(f.read()), 0)
        return True
    except ProcessLookupError:
        return False
    except (OSError, ValueError):  # no builder named (or not ours to signal): judged by the lock's age
        try:
            return time.time() - os.path.getmtime(lock) < STALE_LOCK_SECONDS
        except OSError:
            return True


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
