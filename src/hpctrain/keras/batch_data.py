"""Data that is not arrays (a ``keras.utils.PyDataset``, a ``tf.data``-style ``Dataset``, a Python
generator, a torch ``DataLoader``) as the engine's loader, read the way Keras's own ``fit`` reads it.

Keras's epoch iterator does the reading: ``steps_per_epoch`` and ``validation_steps`` (a pass that
carries on across epochs), the end of an epoch when a generator runs out, ``class_weight``, a
``PyDataset``'s ``on_epoch_end`` and its indices shuffled per epoch, each as in Keras. The engine
sees one Keras epoch per pass over the loader.
"""

from __future__ import annotations

import types

import keras
import torch
from keras.src.trainers.data_adapters import data_adapter_utils

# Batches an epoch may have handed out before it is left (the engine reads the first batch to learn
# the output's shape); the next pass then gives them again and carries on with that epoch.
_PEEKED = 1


def holds_batches(x) -> bool:
    """Whether ``x`` is data Keras reads batch by batch (not arrays)."""
    return isinstance(x, (keras.utils.PyDataset, torch.utils.data.DataLoader, types.GeneratorType))


def unpacked(data) -> tuple:
    """``(x, y)`` or ``(x, y, sample_weight)`` from a batch as a Keras step unpacks it."""
    x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
    return (x, y) if sample_weight is None else (x, y, sample_weight)


class Parcel(torch.Tensor):
    """A one-element tensor that carries a whole Keras batch (any structure: several inputs, dicts,
    no targets) unchanged through the engine's loader path to a step that runs Keras's own
    ``train_step``: the loader's conversions leave a tensor of the right dtype and device as it is."""

    __torch_function__ = torch._C._disabled_torch_function_impl
    batch = None


def parcels(device: torch.device):
    """A batch function for :class:`KerasEpochs`: each batch as ``(parcel, parcel)``."""

    def pack(data) -> tuple:
        parcel = torch.zeros(1, dtype=torch.int64, device=device).as_subclass(Parcel)
        parcel.batch = data
        return parcel, parcel

    return pack


class KerasEpochs(torch.utils.data.IterableDataset):
    """Each pass: one epoch of a Keras ``TorchEpochIterator``, batch by batch."""

    def __init__(self, iterator, batch=unpacked, fresh_each_pass: bool = False):
        super().__init__()
        self.iterator = iterator
        self.batch = batch
        # Keras's validation restarts its reader every pass (validation_steps take the first batches).
        self.fresh_each_pass = fresh_each_pass
        self.rows = 0  # samples in the last pass (where Keras's metric objects take their weight)
        self._open = None  # (epoch, batches handed out) of an epoch left after its first batches

    def __len__(self) -> int:
        steps = self.iterator.num_batches
        if steps is None:  # a generator: known once it has run out
            raise TypeError("the number of batches is not known before the data runs out")
        return steps

    def __iter__(self):
        epoch, given = self._open if self._open is not None else (self._epoch(), [])
        self._open = (epoch, given)
        yield from list(given)
        for batch in epoch:
            if len(given) < _PEEKED:
                given.append(batch)
            else:
                self._open = None  # past the first batches: a later pass starts a new epoch
            yield batch
        self._open = None

    def _epoch(self):
        self.rows = 0
        if self.fresh_each_pass:
            self.iterator.reset()
        for _, _, data in self.iterator:
            batch = self.batch(data[0])
            self.rows += _rows(data[0])
            yield batch


def _rows(x) -> int:
    first = keras.tree.flatten(x)[0]
    return int(first.shape[0])


def loader(iterator, batch=unpacked, fresh_each_pass: bool = False):
    """Keras's epoch iterator as a ``DataLoader`` of whole batches (the engine's loader input)."""
    # A generator of its own: a DataLoader draws a seed as each pass begins, which must not move
    # torch's global RNG (a shuffled DataLoader read by Keras's iterator draws its order from it).
    return torch.utils.data.DataLoader(KerasEpochs(iterator, batch, fresh_each_pass), batch_size=None,
                                       collate_fn=_as_given, generator=torch.Generator())


def _as_given(batch):
    return batch


def rows_of(data_loader) -> int:
    return data_loader.dataset.rows


def _epoch_iterator_class():
    from keras.src.backend.torch.trainer import TorchEpochIterator  # no public name for Keras's reader

    return TorchEpochIterator


def epoch_iterator(model, x, y=None, sample_weight=None, batch_size=None, steps=None, shuffle=False,
                   class_weight=None):
    """Keras's reader of ``x`` as its ``fit``/``evaluate`` makes it: the model built from its first
    batch, then reset (a ``PyDataset``'s ``on_epoch_end`` runs once before the first epoch, as in Keras)."""
    iterator = _epoch_iterator_class()(x=x, y=y, sample_weight=sample_weight, batch_size=batch_size,
                                       steps_per_epoch=steps, shuffle=shuffle, class_weight=class_weight,
                                       steps_per_execution=1)
    model._symbolic_build(iterator=iterator)
    iterator.reset()
    return iterator


def validation_loader(model, arguments: dict, batch=unpacked):
    """``validation_data`` read as Keras's ``fit`` reads it each epoch, or ``None``."""
    validation = arguments["validation_data"]
    if validation is None:
        return None
    if isinstance(validation, (list, tuple)):
        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(tuple(validation))
    else:
        x, y, sample_weight = validation, None, None
    iterator = _epoch_iterator_class()(x=x, y=y, sample_weight=sample_weight,
                                       batch_size=arguments["validation_batch_size"] or arguments["batch_size"],
                                       steps_per_epoch=arguments["validation_steps"], shuffle=False,
                                       steps_per_execution=1)
    return loader(iterator, batch, fresh_each_pass=True)
