"""``tf.data``: a ``Dataset`` pipeline in Python over NumPy arrays, which Keras's ``fit``,
``evaluate`` and ``predict`` take as they take a ``keras.utils.PyDataset``.

A ``Dataset`` is a ``keras.utils.PyDataset``: ``len(ds)`` is its number of elements (batches, once
batched), ``ds[i]`` the i-th element of the current epoch as NumPy arrays, and ``on_epoch_end``
(called by Keras after every epoch) starts a new pass, in which ``shuffle`` reshuffles when asked.
Iterating (``for x, y in ds``) gives torch tensors. Nothing runs in parallel: ``prefetch`` and
``num_parallel_calls`` are accepted and have no effect.
"""

from __future__ import annotations

import itertools
import threading
import types

import numpy as np
import torch

from hpctrain import keras
from hpctrain.tfcompat import elements as el

AUTOTUNE = -1
INFINITE = -1  # cardinality of an endless dataset, as tf.data.INFINITE_CARDINALITY
UNKNOWN = -2  # cardinality not known before iterating (after filter), as tf.data.UNKNOWN_CARDINALITY
INFINITE_CARDINALITY, UNKNOWN_CARDINALITY = INFINITE, UNKNOWN


def _scaled(length: int, function) -> int:
    return length if length in (INFINITE, UNKNOWN) else function(length)


def _buffer_shuffle(source, buffer_size: int, rng: np.random.Generator):
    """TensorFlow's shuffle: keep ``buffer_size`` elements, emit a random one, refill from the source."""
    buffer = []
    for item in source:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        index = rng.integers(len(buffer))
        yield buffer[index]
        buffer[index] = item
    while buffer:
        index = rng.integers(len(buffer))
        buffer[index], buffer[-1] = buffer[-1], buffer[index]
        yield buffer.pop()


class Dataset(keras.utils.PyDataset):
    """As ``tf.data.Dataset``. Build one with :meth:`from_tensor_slices` (or :meth:`from_tensors`,
    :meth:`range`), then chain ``shuffle``, ``map``, ``batch``, ``cache``, ``prefetch`` ..."""

    def __init__(self, make_iterator, length: int, batched: bool = False):
        super().__init__()
        self._make_iterator = make_iterator  # shuffled: bool -> iterator over NumPy elements
        self._length = length
        self._batched = batched
        self._lock = threading.Lock()
        self._epoch = None  # (iterator, elements pulled so far) of the pass ds[i] reads
        self._stream = None  # the endless pass of an infinite dataset

    # -- sources -----------------------------------------------------------------------------

    @staticmethod
    def from_tensor_slices(tensors, name=None) -> "Dataset":
        """One element per index of the first dimension; tuples and dicts keep their structure
        (a list is one tensor, as in TensorFlow)."""
        data = el.to_numpy(tensors)
        count = el.num_slices(data)
        return Dataset(lambda shuffled: (el.slice_at(data, i) for i in range(count)), count)

    @staticmethod
    def from_tensors(tensors, name=None) -> "Dataset":
        """A dataset of one element: ``tensors`` whole."""
        data = el.to_numpy(tensors)
        return Dataset(lambda shuffled: iter([data]), 1)

    @staticmethod
    def range(*args, dtype="int64", name=None) -> "Dataset":
        """As ``tf.data.Dataset.range(stop)`` / ``range(start, stop[, step])``: int64 scalars."""
        values = np.arange(*args, dtype=str(dtype))
        return Dataset(lambda shuffled: iter(list(values)), len(values))

    @staticmethod
    def from_generator(generator, output_types=None, output_shapes=None, args=None, output_signature=None,
                       name=None) -> "Dataset":
        """The elements ``generator(*args)`` yields, on every pass (its length is unknown).
        ``output_types`` (a dtype or a structure of them) casts the elements; shapes and
        signatures are not checked."""
        def make(shuffled):
            for element in generator(*(args or ())):
                element = el.to_numpy(element, lists_are_tuples=True)
                yield element if output_types is None else el.cast_like(element, output_types)

        return Dataset(make, UNKNOWN)

    @staticmethod
    def zip(*datasets, name=None) -> "Dataset":
        """As ``tf.data.Dataset.zip((a, b))``: tuples of the datasets' elements, as long as the
        shortest."""
        if len(datasets) == 1 and isinstance(datasets[0], (tuple, list)):
            datasets = tuple(datasets[0])
        lengths = [d._length for d in datasets]
        finite = [n for n in lengths if n >= 0]
        length = min(finite) if finite else (UNKNOWN if UNKNOWN in lengths else INFINITE)
        if finite and UNKNOWN in lengths:
            length = UNKNOWN
        return Dataset(lambda shuffled: zip(*(d._make_iterator(shuffled) for d in datasets)), length,
                       batched=all(d._batched for d in datasets))

    # -- transformations ---------------------------------------------------------------------

    def _derive(self, make_iterator, length=None, batched=None) -> "Dataset":
        return Dataset(make_iterator, self._length if length is None else length,
                       self._batched if batched is None else batched)

    def shuffle(self, buffer_size, seed=None, reshuffle_each_iteration=True, name=None) -> "Dataset":
        """Shuffle through a buffer of ``buffer_size`` elements (a full permutation when it holds
        the whole dataset). Each pass draws a new order unless ``reshuffle_each_iteration=False``.
        Without ``seed`` the seed is drawn from NumPy's global generator, which
        ``tf.random.set_seed`` seeds."""
        buffer_size = int(buffer_size)
        if buffer_size < 1 and buffer_size != AUTOTUNE:
            raise ValueError(f"shuffle's buffer_size must be at least 1; got {buffer_size}.")
        base_seed = int(seed) if seed is not None else int(np.random.randint(2**31 - 1))
        passes = itertools.count()

        def make(shuffled):
            source = self._make_iterator(shuffled)
            if not shuffled:
                return source
            rng = np.random.default_rng([base_seed, next(passes) if reshuffle_each_iteration else 0])
            size = buffer_size if buffer_size != AUTOTUNE else 2**62
            return _buffer_shuffle(source, size, rng)

        return self._derive(make)

    def batch(self, batch_size, drop_remainder=False, num_parallel_calls=None, deterministic=None,
              name=None) -> "Dataset":
        """Stack ``batch_size`` consecutive elements into one; the last batch is smaller unless
        ``drop_remainder``."""
        size = int(batch_size)
        if size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}.")

        def make(shuffled):
            source = self._make_iterator(shuffled)
            while True:
                chunk = list(itertools.islice(source, size))
                if not chunk or (drop_remainder and len(chunk) < size):
                    return
                yield el.stack(chunk)

        length = _scaled(self._length, (lambda n: n // size) if drop_remainder else (lambda n: -(-n // size)))
        return self._derive(make, length, batched=True)

    def unbatch(self, name=None) -> "Dataset":
        """Split every element along its first axis (the inverse of ``batch``)."""
        def make(shuffled):
            for batch in self._make_iterator(shuffled):
                for i in range(el.num_slices(batch)):
                    yield el.slice_at(batch, i)

        return self._derive(make, UNKNOWN if self._length != INFINITE else INFINITE, batched=False)

    def map(self, map_func, num_parallel_calls=None, deterministic=None, name=None) -> "Dataset":
        """Apply ``map_func`` to every element (a tuple's components are passed as arguments);
        it receives torch tensors and may return tensors, arrays, tuples or dicts of them."""
        def make(shuffled):
            for element in self._make_iterator(shuffled):
                yield el.to_numpy(el.call_with_element(map_func, element), lists_are_tuples=True)

        return self._derive(make)

    def filter(self, predicate, name=None) -> "Dataset":
        """Keep the elements for which ``predicate`` is true."""
        def make(shuffled):
            for element in self._make_iterator(shuffled):
                if bool(np.asarray(el.leaf_to_numpy(el.call_with_element(predicate, element)))):
                    yield element

        return self._derive(make, UNKNOWN if self._length != INFINITE else INFINITE)

    def cache(self, filename="", name=None) -> "Dataset":
        """Keep the elements of the first complete pass in memory and replay them after (so a
        shuffle before ``cache`` is frozen, as in TensorFlow). ``filename`` is ignored."""
        stored = {}

        def make(shuffled):
            if shuffled in stored:
                return iter(stored[shuffled])
            return self._fill_cache(stored, shuffled)

        return self._derive(make)

    def _fill_cache(self, stored: dict, shuffled: bool):
        pulled = []
        for element in self._make_iterator(shuffled):
            pulled.append(element)
            yield element
        stored.setdefault(shuffled, pulled)

    def prefetch(self, buffer_size, name=None) -> "Dataset":
        """Accepted for compatibility; elements are produced when asked for."""
        return self._derive(self._make_iterator)

    def take(self, count, name=None) -> "Dataset":
        """The first ``count`` elements (all of them for -1)."""
        count = int(count)
        if count < 0:
            return self._derive(self._make_iterator)
        length = count if self._length == INFINITE else _scaled(self._length, lambda n: min(n, count))
        return self._derive(lambda shuffled: itertools.islice(self._make_iterator(shuffled), count), length)

    def skip(self, count, name=None) -> "Dataset":
        """All but the first ``count`` elements (none of them for -1)."""
        count = int(count)
        if count < 0:
            return self._derive(lambda shuffled: iter(()), 0 if self._length != INFINITE else INFINITE)
        length = _scaled(self._length, lambda n: max(n - count, 0))
        return self._derive(lambda shuffled: itertools.islice(self._make_iterator(shuffled), count, None), length)

    def repeat(self, count=None, name=None) -> "Dataset":
        """Pass over the dataset ``count`` times (forever without ``count`` or with -1); each pass
        reshuffles where the pipeline shuffles."""
        count = None if count is None or int(count) < 0 else int(count)

        def make(shuffled):
            passes = itertools.count() if count is None else range(count)
            return itertools.chain.from_iterable(self._make_iterator(shuffled) for _ in passes)

        if count is None:
            length = 0 if self._length == 0 else INFINITE
        else:
            length = _scaled(self._length, lambda n: n * count)
        return self._derive(make, length)

    # -- reading -----------------------------------------------------------------------------

    def __iter__(self):
        """The elements of a new pass, as torch tensors."""
        return (el.to_torch(element) for element in self._make_iterator(True))

    def as_numpy_iterator(self):
        """The elements of a new pass, as NumPy arrays."""
        return iter(self._make_iterator(True))

    def cardinality(self) -> torch.Tensor:
        """The number of elements, -1 if infinite, -2 if not known before iterating."""
        return torch.tensor(self._length, dtype=torch.int64)

    def __len__(self) -> int:
        if self._length == INFINITE:
            raise TypeError("The dataset is infinite.")
        if self._length == UNKNOWN:
            raise TypeError("The dataset length is unknown.")
        return self._length

    def as_arrays(self):
        """``(x, y, sample_weight)`` of one unshuffled pass as whole NumPy arrays (batches joined
        back together; ``y`` and ``sample_weight`` None where the elements lack them), so the data
        can be held in memory. Map functions run once, on that pass."""
        if self._length == INFINITE:
            raise ValueError("as_arrays needs a finite dataset; this one repeats forever (use take or repeat(n)).")
        pulled = list(self._make_iterator(False))
        if not pulled:
            raise ValueError("as_arrays: the dataset has no elements.")
        whole = el.concatenate(pulled) if self._batched else el.stack(pulled)
        if isinstance(whole, tuple):
            if not 1 <= len(whole) <= 3:
                raise ValueError(f"as_arrays expects elements (x,), (x, y) or (x, y, sample_weight); got {len(whole)}.")
            return tuple(whole) + (None,) * (3 - len(whole))
        return whole, None, None

    # -- keras.utils.PyDataset ---------------------------------------------------------------

    @property
    def num_batches(self):
        if self._length == INFINITE:
            return None
        if self._length == UNKNOWN:
            with self._lock:
                return len(self._pull_through(None))
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):
            raise TypeError("Dataset elements are read one index at a time.")
        with self._lock:
            if self._length == INFINITE:  # Keras reads an endless dataset in order
                if self._stream is None:
                    self._stream = self._make_iterator(True)
                return next(self._stream)
            pulled = self._pull_through(int(index))
        if not 0 <= index < len(pulled):
            raise IndexError(f"element {index} of a dataset of {len(pulled)}")
        return pulled[index]

    def _pull_through(self, index):
        """The current pass's elements, read far enough to hold ``index`` (all of them for None)."""
        if self._epoch is None:
            self._epoch = (self._make_iterator(True), [])
        source, pulled = self._epoch
        while index is None or len(pulled) <= index:
            element = next(source, None)
            if element is None:
                break
            pulled.append(element)
        return pulled

    def on_epoch_end(self):
        """Start a new pass (reshuffled where the pipeline shuffles)."""
        with self._lock:
            if self._length != INFINITE:
                self._epoch = None

    def __repr__(self) -> str:
        size = {INFINITE: "infinite", UNKNOWN: "unknown"}.get(self._length, self._length)
        return f"<Dataset cardinality={size}{' batched' if self._batched else ''}>"


experimental = types.SimpleNamespace(AUTOTUNE=AUTOTUNE, INFINITE_CARDINALITY=INFINITE,
                                     UNKNOWN_CARDINALITY=UNKNOWN, cardinality=lambda dataset: dataset.cardinality())
