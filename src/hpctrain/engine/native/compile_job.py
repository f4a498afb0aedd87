"""Compiles the C++ step loop: run as a script, in a process of its own, by ``native._start_build``.

A process, not a thread: a short training program exits before the ~10 s build would end, and a
thread would die with it, leaving no library. Imports nothing of hpctrain or PyTorch (the
parent passes the whole compiler command), so it starts at once.

    python compile_job.py '{"command": [...], "output": ..., "lock": ..., "failure": ...}'
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile


def compile_library(command: list[str], output: str, lock: str, failure: str) -> bool:
    """Runs ``command`` (``{output}`` in it standing for the library's path) into a temporary file
    then renamed to ``output``; on failure writes the compiler's message to ``failure``. Removes
    ``lock`` at the end either way."""
    with tempfile.NamedTemporaryFile(suffix=".so", dir=os.path.dirname(output), delete=False) as placeholder:
        temporary = placeholder.name
    try:
        result = subprocess.run([temporary if part == "{output}" else part for part in command],
                                capture_output=True, text=True)
        if result.returncode == 0:
            os.replace(temporary, output)  # readers see no library or the whole library
            return True
        with open(failure, "w") as f:
            f.write(result.stderr[-4000:] or f"the compiler exited with status {result.returncode}")
    except OSError as error:
        with open(failure, "w") as f:
            f.write(str(error))
    finally:
        for leftover in (temporary, lock):
            try:
                os.unlink(leftover)
            except OSError:
                pass
    return False


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
    sys.exit(0 if compile_library(**json.loads(sys.argv[1])) else 1)
