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


if __name__ == "__main__":
    os.nice(10)  # the training that started it keeps the CPU it needs
    sys.exit(0 if compile_library(**json.loads(sys.argv[1])) else 1)
