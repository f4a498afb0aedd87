"""One run at a time per checkpoint folder: a lock file naming the owner's process and host.

Two runs saving to the same folder would delete each other's files (each prunes and tidies what
it takes for its own leftovers). The writer of a run takes the folder's lock before it reads or
writes a checkpoint and gives it back when ``fit`` ends; a second run is refused with the owner's
pid and host. A lock whose process is gone (on this host) is taken over with a warning; a lock
held by this very process (a ``fit`` that raised) is taken again.
"""

from __future__ import annotations

import atexit
import json
import os
import socket

from hpctrain.errors import CheckpointError, warn

LOCK_NAME = "hpctrain.lock"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), telling a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, alive
    return started is None or _start_time(pid) in (None, started)


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except (OSError, IndexError):
        pass
    return _alive(pid, None)


class FolderLock:
    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        self.held = False

    def _owner(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid())}

    def acquire(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        for _ in range(3):  # a stale lock removed between our reads: try again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._clear_or_refuse(self._read())
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self._owner(), f)
            self.held = True
            atexit.register(self.release)
            return
        raise CheckpointError(f"could not take the lock {self.path}: other processes keep replacing it. Give this "
                              "run its own checkpoint directory.")

    def _read(self) -> dict | None:
        try:
            with open(self.path) as f:
                owner = json.load(f)
            return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None

    def _clear_or_refuse(self, owner: dict | None) -> None:
        if owner == {}:
            return  # released meanwhile
        me = self._owner()
        if owner is None:
            warn(f"the checkpoint folder's lock {self.path} is unreadable (a run killed while writing it); "
                 "taking the folder over.")
        elif owner["pid"] == me["pid"] and owner.get("host") == me["host"]:
            pass  # this process's own lock, left by a fit that raised
        elif owner.get("host") == me["host"] and not _alive(owner["pid"], owner.get("started")):
            warn(f"the checkpoint folder {self.directory} was locked by process {owner['pid']} on this host, which "
                 "is gone; taking the folder over.")
        else:
            raise CheckpointError(
                f"the checkpoint folder {self.directory} is in use by another run: process {owner['pid']} on host "
                f"{owner.get('host')} holds {self.path}. Two runs saving there would delete each other's "
                "checkpoints. Wait for that run to end, or give this run another checkpoint directory; if that "
                f"process is not training any more, delete {self.path}.")
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        atexit.unregister(self.release)
        try:
            owner = self._read()
            if owner and owner.get("pid") == os.getpid():
                os.remove(self.path)
        except OSError:
            pass
