"""Training checkpoints: one safetensors file per checkpoint, tensors as tensors, the rest as JSON.

A checkpoint is a nested structure of dicts, lists, numbers, strings, tensors and NumPy arrays.
Tensors and arrays go into the safetensors data section; everything else is JSON in the
safetensors metadata. Nothing in the file is code, and loading never unpickles anything.

Each file carries the SHA-256 of its own bytes (computed with the digest field zeroed), so a
truncated or corrupted file is detected on load. Files are written to a temporary name, fsynced,
renamed, and the folder is fsynced, so a crash at any point leaves either the old set of
checkpoints or the old set plus the new one; the newest ``keep`` files are kept.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import re
import struct

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from hpctrain.errors import CheckpointError, ConfigError, warn

FORMAT = "hpctrain-checkpoint"
VERSION = 1
PREFIX, SUFFIX = "ckpt-", ".safetensors"
_NAME = re.compile(rf"^{PREFIX}(\d+){re.escape(SUFFIX)}$")
_ZERO_DIGEST = "0" * 64
_TENSOR, _ARRAY, _TUPLE = "__tensor__", "__ndarray__", "__tuple__"


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """Where and how often ``fit`` saves its full training state, and how many files it keeps.

    ``save_freq``: ``"epoch"`` (after each epoch's callbacks) or a number of steps (counted over
    the whole run, so a save can fall mid-epoch). ``keep``: how many newest good files stay on
    disk (>= 2 leaves a fallback when the newest is damaged). ``delete_at_end``: remove them all
    once ``fit`` finishes without an error. ``allow_changes``: resume even where the optimizer,
    its settings or the training data differ from the run that wrote the checkpoint (see
    :mod:`hpctrain.engine.resume_checks`); without it such a resume is refused, naming each change.
    """

    directory: str
    save_freq: str | int = "epoch"
    keep: int = 2
    delete_at_end: bool = False
    allow_changes: bool = False

    def __post_init__(self):
        if not isinstance(self.directory, (str, os.PathLike)) or not str(self.directory):
            raise ConfigError(f"the checkpoint directory must be a path; got {self.directory!r}.")
        object.__setattr__(self, "directory", os.fspath(self.directory))
        if self.save_freq != "epoch" and (isinstance(self.save_freq, bool) or not isinstance(self.save_freq, int)
                                          or self.save_freq < 1):
            raise ConfigError(f"save_freq must be 'epoch' or a whole number of steps >= 1; got {self.save_freq!r}.")
        if isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 1:
            raise ConfigError(f"keep must be a whole number >= 1; got {self.keep!r}.")
        if not isinstance(self.allow_changes, bool):
            raise ConfigError(f"allow_changes must be True or False; got {self.allow_changes!r}.")


# --- the file format ------------------------------------------------------------------------


def encode(payload) -> bytes:
    """The payload as one safetensors file (tensors + JSON metadata) carrying its own SHA-256."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _split(payload, "", tensors)
    metadata = {"format": FORMAT, "version": str(VERSION), "sha256": _ZERO_DIGEST,
                "state": json.dumps(structure)}
    blob = bytearray(save_tensors(tensors, metadata=metadata))
    digest = hashlib.sha256(blob).hexdigest()
    start = _digest_offset(blob, _ZERO_DIGEST)
    blob[start:start + 64] = digest.encode()
    return bytes(blob)


def decode(blob: bytes, *, name: str):
    """The payload ``encode`` wrote; :class:`CheckpointError` for anything else or any damage."""
    header = _header(blob, name)
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{name} is damaged: its metadata is a {type(metadata).__name__}, not a JSON object.")
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{name} is not an hpctrain checkpoint (format {metadata.get('format')!r}).")
    digest = metadata.get("sha256", "")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise CheckpointError(f"{name} has no valid checksum field; the file is damaged.")
    zeroed = bytearray(blob)
    start = _digest_offset(zeroed, digest)
    zeroed[start:start + 64] = _ZERO_DIGEST.encode()
    if hashlib.sha256(zeroed).hexdigest() != digest:
        raise CheckpointError(f"{name} fails its SHA-256 check: the file was changed or damaged after writing.")
    try:
        tensors = load_tensors(blob)
        return _join(json.loads(metadata["state"]), tensors)
    except Exception as exc:  # the checksum passed: a writer's bug or a crafted file, still never code execution
        raise CheckpointError(f"{name} could not be read ({type(exc).__name__}: {exc}).") from exc


def _header(blob: bytes, name: str) -> dict:
    if len(blob) < 8:
        raise CheckpointError(f"{name} is truncated ({len(blob)} bytes); expected a safetensors checkpoint.")
    (length,) = struct.unpack("<Q", blob[:8])
    if length > len(blob) - 8:
        raise CheckpointError(f"{name} is truncated or not a safetensors file: its header claims {length} bytes "
                              f"but the file has {len(blob)}. (Pickle files are never loaded.)")
    try:
        header = json.loads(blob[8:8 + length])
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{name} is not a safetensors checkpoint: its header is not JSON ({exc}).") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{name} is not a safetensors checkpoint: its header is not a JSON object.")
    return header


def _digest_offset(blob: bytearray, digest: str) -> int:
    """Where the digest's 64 characters sit: the only ``"sha256":"…"`` with unescaped quotes."""
    (length,) = struct.unpack("<Q", bytes(blob[:8]))
    key = b'"sha256":"' + digest.encode() + b'"'
    found = bytes(blob[8:8 + length]).find(key)
    if found < 0:
        raise CheckpointError("the checkpoint header holds no checksum field.")
    return 8 + found + len(b'"sha256":"')


def _split(value, path: str, tensors: dict):
    """JSON structure with tensors and arrays replaced by references into ``tensors``."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().clone().contiguous()  # a copy: no shared storage in the file
        return {_TENSOR: path}
    if isinstance(value, np.ndarray):
        tensors[path] = torch.from_numpy(np.ascontiguousarray(value).copy())
        return {_ARRAY: path}
    if isinstance(value, dict):
        return {str(key): _split(item, f"{path}/{key}", tensors) for key, item in value.items()}
    if isinstance(value, tuple):
        return {_TUPLE: [_split(item, f"{path}/{index}", tensors) for index, item in enumerate(value)]}
    if isinstance(value, list):
        return [_split(item, f"{path}/{index}", tensors) for index, item in enumerate(value)]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a checkpoint cannot hold a {type(value).__name__} at {path or '/'}")


def _join(structure, tensors: dict):
    if isinstance(structure, list):
        return [_join(item, tensors) for item in structure]
    if isinstance(structure, dict):
        if set(structure) == {_TENSOR}:
            return tensors[structure[_TENSOR]]
        if set(structure) == {_ARRAY}:
            return tensors[structure[_ARRAY]].numpy()
        if set(structure) == {_TUPLE}:
            return tuple(_join(item, tensors) for item in structure[_TUPLE])
        return {key: _join(item, tensors) for key, item in structure.items()}
    return structure


# --- a folder of checkpoints ------------------------------------------------------------------


def checkpoint_files(directory: str) -> list[str]:
    """The folder's checkpoint files, newest (highest serial) first."""
    if not os.path.isdir(directory):
        return []
    named = [(int(match.group(1)), name) for name in os.listdir(directory) if (match := _NAME.match(name))]
    return [os.path.join(directory, name) for _, name in sorted(named, reverse=True)]


def serial_of(path: str) -> int:
    return int(_NAME.match(os.path.basename(path)).group(1))


def save_checkpoint(directory: str, payload, *, keep: int = 2) -> str:
    """Write ``payload`` as the next checkpoint of ``directory``; prune to the newest ``keep``.

    On any write error (a full disk) the temporary file is removed, the existing checkpoints are
    untouched, and :class:`CheckpointError` says so.
    """
    existing = checkpoint_files(directory)
    _remove_stale_temporaries(directory)
    serial = serial_of(existing[0]) + 1 if existing else 1
    path = os.path.join(directory, f"{PREFIX}{serial:08d}{SUFFIX}")
    blob = encode(payload)
    try:
        os.makedirs(directory, exist_ok=True)
        _atomic_write(path, blob)
    except OSError as exc:
        previous = f"the previous checkpoint {existing[0]} is intact" if existing else "no earlier checkpoint exists"
        reason = "the disk is full" if exc.errno == errno.ENOSPC else str(exc)
        raise CheckpointError(f"could not write the checkpoint {path}: {reason} ({exc.strerror or exc}); "
                              f"{previous}. Free space or give another checkpoint directory, then run again "
                              "to resume.") from exc
    _remember_good(path)
    _prune(directory, keep)
    return path


def _prune(directory: str, keep: int) -> None:
    """Removes every file older than the ``keep``-th newest good one: damaged files never count
    toward ``keep`` (a damaged newer file stays until enough good ones are newer than it)."""
    good = 0
    for index, path in enumerate(files := checkpoint_files(directory)):
        good += _is_good(path)
        if good == keep:
            for old in files[index + 1:]:
                os.remove(old)
            return


_known_good: dict[str, tuple[int, int]] = {}  # path -> (size, mtime) when this process last found it intact


def _remember_good(path: str) -> None:
    stat = os.stat(path)
    _known_good[os.path.abspath(path)] = (stat.st_size, stat.st_mtime_ns)


def _is_good(path: str) -> bool:
    """Whether the file reads back intact: checked once per file and change, not at every save."""
    try:
        stat = os.stat(path)
    except OSError:
        return False
    if _known_good.get(os.path.abspath(path)) == (stat.st_size, stat.st_mtime_ns):
        return True
    try:
        load_checkpoint(path)
    except CheckpointError:
        return False
    _remember_good(path)
    return True


def load_latest(directory: str, check=None):
    """``(path, payload)`` of the newest checkpoint that reads back intact, or ``None``.

    ``check(payload, path)``: raises :class:`CheckpointError` where the fields are not what a
    checkpoint holds (a crafted file); such a file counts as damaged. A damaged newer file is
    reported with a warning naming it, and the next older one is tried.
    """
    for path in checkpoint_files(directory):
        try:
            payload = load_checkpoint(path)
            if check is not None:
                check(payload, path)
            return path, payload
        except CheckpointError as exc:
            warn(f"skipping the damaged checkpoint {path}: {exc} Falling back to an older one.")
    return None


def load_checkpoint(path: str):
    """One checkpoint file's payload; :class:`CheckpointError` when it is damaged or not one."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as exc:
        raise CheckpointError(f"could not read the checkpoint {path} ({exc}).") from exc
    return decode(blob, name=path)


def delete_checkpoints(directory: str) -> None:
    """The folder's checkpoints, and the folder itself once nothing else is left in it (as Keras's
    BackupAndRestore removes its backup folder)."""
    for path in checkpoint_files(directory):
        os.remove(path)
    try:
        os.rmdir(directory)
    except OSError:
        pass  # other files are there, or it was never made


def _remove_stale_temporaries(directory: str) -> None:
    """Half-written files of a process killed mid-save; never read, so only tidied here."""
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            if name.startswith(PREFIX) and ".tmp-" in name:
                os.remove(os.path.join(directory, name))


def _atomic_write(path: str, blob: bytes) -> None:
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, "wb") as f:
            _write_all(f, blob)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    _fsync_directory(os.path.dirname(path) or ".")


def _write_all(f, blob: bytes) -> None:
    f.write(blob)


def _fsync_directory(directory: str) -> None:
    """Makes the rename itself durable (POSIX); not possible on every platform."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
