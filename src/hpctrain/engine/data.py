"""Resident data: the whole data set on the device as one tensor, batches gathered by index.

Permuting a 60,000 x 784 float32 array costs more than all of an epoch's GEMMs for a small MLP,
so an epoch draws one permutation of *indices* and batches are ``index_select``s into the
resident tensor: no per-batch collate, no host copies, no whole-data-set copy per epoch.

Shuffled rows are scattered through memory, so a gather waits on memory more than it copies.
Small batches are therefore gathered several at a time (up to ``GATHER_BYTES`` per call, about
what stays in a core's L2 cache until its steps read it): one call keeps more rows in flight and
pays the per-call overhead once. For the 784-wide, 32-row seed batches that halves the gather.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Iterator

import numpy as np
import torch

from hpctrain.errors import InputError

GATHER_BYTES = 1 << 20
MAX_BATCHES_PER_GATHER = 16


class Columns:
    """Several tensors with the same number of rows that travel together: a model's several
    inputs, outputs or targets.

    It offers the few tensor operations the data path uses (row slices, ``split``, ``index_select``,
    ``detach``, ``shape[0]``), each applied to every part, so single-tensor data takes the same
    code with no branch per batch.
    """

    __slots__ = ("parts",)

    def __init__(self, parts):
        self.parts = tuple(parts)

    @property
    def shape(self) -> tuple[int]:
        return (self.parts[0].shape[0],)

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(part.shape) for part in self.parts)

    @property
    def dtype(self) -> tuple[torch.dtype, ...]:
        return tuple(part.dtype for part in self.parts)

    @property
    def device(self) -> torch.device:
        return self.parts[0].device

    def __getitem__(self, rows) -> "Columns":
        return Columns(part[rows] for part in self.parts)

    def split(self, sizes: list[int]) -> list["Columns"]:
        return [Columns(pieces) for pieces in zip(*(part.split(sizes) for part in self.parts))]

    def index_select(self, dim: int, index: torch.Tensor) -> "Columns":
        return Columns(part.index_select(dim, index) for part in self.parts)

    def detach(self) -> "Columns":
        return Columns(part.detach() for part in self.parts)

    def float(self) -> "Columns":
        return Columns(part.float() for part in self.parts)

    def cpu(self) -> "Columns":
        return Columns(part.cpu() for part in self.parts)

    def numpy(self) -> list[np.ndarray]:
        return [part.numpy() for part in self.parts]

    def __repr__(self) -> str:
        return f"Columns(shapes={self.shapes})"


class WeightedTargets:
    """Targets with one loss weight per sample (``sample_weight``/``class_weight``).

    Rows are taken from both at once (``[rows]``, ``split``, ``index_select``) as from a tensor, so every
    gather, split and shard of the targets keeps the weights aligned with them.
    """

    def __init__(self, targets, weights: torch.Tensor):
        self.targets = targets
        self.weights = weights

    def __len__(self) -> int:
        return self.weights.shape[0]

    @property
    def shape(self) -> tuple[int]:
        return (self.weights.shape[0],)

    def __getitem__(self, rows) -> "WeightedTargets":
        return WeightedTargets(self.targets[rows], self.weights[rows])

    def split(self, sizes: list[int]) -> list["WeightedTargets"]:
        return [WeightedTargets(targets, weights)
                for targets, weights in zip(self.targets.split(sizes), self.weights.split(sizes))]

    def index_select(self, dim: int, index: torch.Tensor) -> "WeightedTargets":
        return WeightedTargets(self.targets.index_select(dim, index), self.weights.index_select(dim, index))


def split_weights(y):
    """``(targets, weights)``; weights ``None`` for unweighted targets."""
    return (y.targets, y.weights) if isinstance(y, WeightedTargets) else (y, None)


def concat_rows(batches: list):
    """Batches of a tensor, or of ``Columns``, joined along the rows."""
    if isinstance(batches[0], Columns):
        return Columns(torch.cat(parts) for parts in zip(*(batch.parts for batch in batches)))
    return torch.cat(batches)


def to_tensor(array, *, name: str, device: torch.device) -> torch.Tensor:
    """Numeric array-like -> tensor on ``device``; floats become float32 as Keras casts them."""
    if isinstance(array, Columns):
        return Columns(to_tensor(part, name=f"{name}[{i}]", device=device) for i, part in enumerate(array.parts))
    if isinstance(array, torch.Tensor):
        tensor = array.detach()
    else:
        tensor = torch.from_numpy(_as_numeric_numpy(array, name=name))
    # Fancy-index gathers and GEMMs both want one dense block.
    return with_training_dtype(tensor).to(device).contiguous()


def with_training_dtype(tensor: torch.Tensor) -> torch.Tensor:
    """Floats (and bools) as float32, as Keras casts them; other integers as int64 (class indices)."""
    if tensor.is_floating_point() and tensor.dtype != torch.float32 or tensor.dtype == torch.bool:
        return tensor.to(torch.float32)
    if not tensor.is_floating_point() and tensor.dtype != torch.int64:
        return tensor.to(torch.int64)
    return tensor


def as_numeric(array, *, name: str):
    """A tensor as it is, anything else as a numeric NumPy array (or a clear error)."""
    return array.detach() if isinstance(array, torch.Tensor) else _as_numeric_numpy(array, name=name)


def _as_numeric_numpy(array, *, name: str) -> np.ndarray:
    try:
        result = np.asarray(array)
    except (ValueError, TypeError) as exc:
        raise InputError(
            f"{name} could not be read as one rectangular numeric array ({exc}); "
            "give a NumPy array or tensor whose rows all have the same length."
        ) from exc
    if result.dtype.kind not in "biuf":
        raise InputError(
            f"{name} has dtype {result.dtype} ({_describe_kind(result.dtype)}); expected numbers "
            f"(float or int). Convert it first, e.g. {name} = np.asarray({name}, dtype='float32')."
        )
    if result.ndim == 0:
        raise InputError(f"{name} is a single number; expected an array with one row per sample.")
    # torch.from_numpy shares the buffer and warns on a read-only one (np.frombuffer, a memory
    # map): one copy of the user's array, made once per fit, instead of a warning.
    return result if result.flags.writeable else result.copy()


def _describe_kind(dtype: np.dtype) -> str:
    return {"O": "Python objects", "U": "strings", "S": "bytes", "c": "complex numbers",
            "M": "datetimes", "m": "time deltas"}.get(dtype.kind, "not numeric")


def batches_per_gather(x, batch_size: int) -> int:
    """How many batches of ``x``'s rows one gather fetches: about ``GATHER_BYTES``, at least one."""
    parts = getattr(x, "parts", (x,))
    row_bytes = sum(part[:1].numel() * part.element_size() for part in parts)
    return max(1, min(MAX_BATCHES_PER_GATHER, GATHER_BYTES // max(1, row_bytes * batch_size)))


@dataclasses.dataclass(frozen=True)
class BatchSchedule:
    """Which rows make each batch of one pass over ``num_samples`` rows."""

    num_samples: int
    batch_size: int

    @property
    def steps(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def slices(self) -> Iterator[slice]:
        for start in range(0, self.num_samples, self.batch_size):
            yield slice(start, min(start + self.batch_size, self.num_samples))


class ResidentData:
    """``x`` (and ``y``) resident on one device; yields batches in order or shuffled."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor | None):
        self.x = x
        self.y = y

    def __len__(self) -> int:
        return self.x.shape[0]

    def with_rows_flattened(self) -> "ResidentData":
        """The same rows, each flattened to one vector: a view of ``x`` where it is contiguous."""
        return ResidentData(self.x.reshape(len(self.x), -1), self.y)

    def batches(self, batch_size: int, *, order: torch.Tensor | None = None, ones_column: bool = False):
        """Yield ``(x_batch, y_batch)`` in row order, or for the rows ``order`` lists (a permutation of
        all rows, or a part of one); shuffled batches are gathered a few at a time, and their ``x``
        is overwritten two gathers later (copy it to keep it longer).

        ``ones_column``: gathered matrix rows come with a column of ones appended, for a step that
        takes the first layer's bias inside its GEMM (rows that need no gather come as they are).
        """
        schedule = BatchSchedule(len(self) if order is None else len(order), batch_size)
        if order is None:
            for rows in schedule.slices():
                yield self.x[rows], None if self.y is None else self.y[rows]
            return
        yield from self._gathered(order, schedule, lambda rows: (rows.start, rows.stop), ones_column)

    def shard_batches(self, batch_size: int, rank: int, world_size: int, *, order: torch.Tensor | None = None):
        """Yield ``(x, y, global_rows)``: this replica's contiguous share of each global batch.

        Every replica walks the same global batches (the same ``order``); replica ``r`` takes rows
        ``[b*r // W, b*(r+1) // W)`` of a global batch of ``b`` rows, so shares differ by at most one
        row and an uneven last batch is split, not dropped.
        """
        schedule = BatchSchedule(len(self) if order is None else len(order), batch_size)

        def share(rows: slice) -> tuple[int, int]:
            size = rows.stop - rows.start
            return rows.start + size * rank // world_size, rows.start + size * (rank + 1) // world_size

        if order is None:
            for rows in schedule.slices():
                first, last = share(rows)
                yield self.x[first:last], None if self.y is None else self.y[first:last], rows.stop - rows.start
            return
        for (xb, yb), rows in zip(self._gathered(order, schedule, share), schedule.slices()):
            yield xb, yb, rows.stop - rows.start

    def batch_runs(self, batch_size: int, *, order: torch.Tensor | None = None, ones_column: bool = False):
        """Like :meth:`batches`, a few consecutive batches at a time: ``(x, y, sizes)`` with the
        batches' rows one after another (``sizes[k]`` rows each), for a loop that runs many steps
        per call."""
        schedule = BatchSchedule(len(self) if order is None else len(order), batch_size)
        if order is None:
            slices = list(schedule.slices())
            per_run = batches_per_gather(self.x, batch_size)
            for group_start in range(0, len(slices), per_run):
                group = slices[group_start:group_start + per_run]
                rows = slice(group[0].start, group[-1].stop)
                yield self.x[rows], None if self.y is None else self.y[rows], [s.stop - s.start for s in group]
            return
        yield from self._gathered_runs(order, schedule, lambda rows: (rows.start, rows.stop), ones_column)

    def _gathered(self, order: torch.Tensor, schedule: "BatchSchedule", span, ones_column: bool = False):
        """``(x, y)`` of each batch's rows ``order[first:last]``, ``(first, last) = span(batch slice)``.

        Each batch is a view of a gathered run (:meth:`_gathered_runs`), all made by one ``split``
        call (a slice per batch cost ~1 us for x and again for y per step)."""
        for xs, ys, sizes in self._gathered_runs(order, schedule, span, ones_column):
            yield from zip(xs.split(sizes), [None] * len(sizes) if ys is None else ys.split(sizes))

    def _gathered_runs(self, order: torch.Tensor, schedule: "BatchSchedule", span, ones_column: bool = False):
        """``(x, y, sizes)``: consecutive batches' rows gathered together, a chunk of about
        ``GATHER_BYTES``. A replica's spans leave the other replicas' rows between them, which are
        not gathered."""
        spans = [span(rows) for rows in schedule.slices()]
        per_gather = batches_per_gather(self.x, schedule.batch_size)
        x_chunks = _AlternatingChunks(self.x, rows=min(len(order), per_gather * schedule.batch_size),
                                      ones_column=ones_column)
        for group_start in range(0, len(spans), per_gather):
            group = spans[group_start:group_start + per_gather]
            if all(previous[1] == following[0] for previous, following in zip(group, group[1:])):
                index = order[group[0][0]:group[-1][1]]
            else:
                index = torch.cat([order[first:last] for first, last in group])
            xs = x_chunks.gather(index)
            # Targets are gathered fresh: deferred metrics keep them until the next refresh.
            ys = None if self.y is None else self.y.index_select(0, index)
            yield xs, ys, [last - first for first, last in group]

    def shard(self, rank: int, world_size: int) -> "ResidentData":
        """This replica's contiguous share of the rows, for evaluation and prediction."""
        first, last = len(self) * rank // world_size, len(self) * (rank + 1) // world_size
        return ResidentData(self.x[first:last], None if self.y is None else self.y[first:last])

    def split_tail(self, fraction: float) -> tuple["ResidentData", "ResidentData"]:
        """Keras's ``validation_split``: the last ``fraction`` of the rows, taken before shuffling."""
        split_at = int(len(self) * (1.0 - fraction))
        head = ResidentData(self.x[:split_at], None if self.y is None else self.y[:split_at])
        tail = ResidentData(self.x[split_at:], None if self.y is None else self.y[split_at:])
        return head, tail


class _AlternatingChunks:
    """Gathers rows of ``source`` into two preallocated chunks, taken in turn.

    A fresh megabyte per gather is a fresh mapping from the allocator whose pages fault in, zeroed
    by the kernel, at the first write: ~25 faults per seed step, costlier than the gather. The
    chunk before the current one stays intact, so a batch is valid until two gathers later; the
    training loop is done with it after one step.
    """

    def __init__(self, source, rows: int, ones_column: bool = False):
        self.source = source
        self.rows = rows
        self.chunks = []
        self.turn = 0
        self.ones_column = (ones_column and isinstance(source, torch.Tensor) and source.dim() == 2
                            and source.is_floating_point())

    def gather(self, index: torch.Tensor):
        if not isinstance(self.source, torch.Tensor):  # several inputs: each part gathered fresh
            return self.source.index_select(0, index)
        if len(self.chunks) < 2:
            self.chunks.append(self._new_chunk())
        chunk = self.chunks[self.turn][:len(index)]
        self.turn = 1 - self.turn
        if self.ones_column:  # the rows land left of the ones, which were written once
            torch.index_select(self.source, 0, index, out=chunk[:, :-1])
            return chunk
        return torch.index_select(self.source, 0, index, out=chunk)

    def _new_chunk(self) -> torch.Tensor:
        if self.ones_column:
            return self.source.new_ones((self.rows, self.source.shape[1] + 1))
        return self.source.new_empty((self.rows, *self.source.shape[1:]))


_EMPTY = object()


class LoaderData:
    """An iterable of ``(x, y)`` batches (a ``DataLoader``), moved to the device batch by batch."""

    def __init__(self, loader, device: torch.device):
        self.loader = loader
        self.device = device
        # The loss's label checks and conversions, ``y -> y``: arrays get them once before training,
        # a loader's batches each as they come (set by the trainer once it knows the output's shape).
        self.prepare_targets = None

    def __len__(self) -> int:
        return len(self.loader.dataset) if hasattr(self.loader, "dataset") else 0

    @property
    def steps(self) -> int | None:
        try:
            return len(self.loader)
        except TypeError:
            return None

    def batches(self):
        """One pass's batches. The loader's iterator is made, and its first batch fetched, here at
        the call: that is when a loader draws its workers' seed and a shuffling sampler its order
        from torch's RNG, so the caller knows which RNG state the pass's order came from."""
        iterator = iter(self.loader)
        first = next(iterator, _EMPTY)
        return self._moved_to_device(iterator if first is _EMPTY else itertools.chain([first], iterator))

    def _moved_to_device(self, iterator):
        # non_blocking lets the copy of batch k+1 overlap the step of batch k with pinned memory.
        for batch in iterator:
            if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
                raise InputError(
                    "each batch from the data loader must be an (x, y) pair or an (x, y, sample_weight) triple; "
                    f"got {type(batch).__name__}. Return (inputs, targets) from the dataset."
                )
            xb, *targets = (with_training_dtype(torch.as_tensor(part)) for part in batch)
            if self.prepare_targets is not None:  # where the loader made them: its checks read no device
                targets[0] = self.prepare_targets(targets[0])
            xb, *targets = (part.to(self.device, non_blocking=True) for part in (xb, *targets))
            yield xb, targets[0] if len(targets) == 1 else WeightedTargets(targets[0], targets[1])
