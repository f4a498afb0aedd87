"""Measured plan choices kept between runs, so that a second run of the same model tunes nothing.

One small JSON file per key (a hash of the model's signature, input shapes, hardware and library
versions) under the user's cache directory; ``hpctrain doctor --clear-cache`` removes them all.
A file that cannot be read or parsed counts as absent: the cache only ever saves time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time


def cache_dir() -> str:
    """``$HPCTRAIN_CACHE_DIR``, else ``$XDG_CACHE_HOME/hpctrain``, else ``~/.cache/hpctrain``."""
    explicit = os.environ.get("HPCTRAIN_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hpctrain")


def key_of(description: dict) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:32]


def load(key: str) -> dict | None:
    try:
        with open(_path(key)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def store(key: str, choices: dict) -> None:
    """Written to a temporary file and renamed, so a reader never sees half a file."""
    folder = os.path.dirname(_path(key))
    try:
        os.makedirs(folder, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(descriptor, "w") as f:
            json.dump({**choices, "measured_at": time.strftime("%Y-%m-%d %H:%M")}, f, indent=1)
        os.replace(temporary, _path(key))
    except OSError:
        pass  # a read-only or full cache directory costs a re-measurement next time, nothing more


def entries() -> list[dict]:
    """Every readable cached plan, in no particular order (``hpctrain doctor`` lists some of them)."""
    folder = os.path.join(cache_dir(), "plans")
    names = sorted(name for name in os.listdir(folder) if name.endswith(".json")) if os.path.isdir(folder) else []
    found = [load(name.removesuffix(".json")) for name in names]
    return [entry for entry in found if isinstance(entry, dict)]


def clear() -> int:
    """Removes every cached plan; returns how many there were."""
    folder = os.path.join(cache_dir(), "plans")
    count = len([name for name in os.listdir(folder) if name.endswith(".json")]) if os.path.isdir(folder) else 0
    shutil.rmtree(folder, ignore_errors=True)
    return count


def _path(key: str) -> str:
    return os.path.join(cache_dir(), "plans", f"{key}.json")
