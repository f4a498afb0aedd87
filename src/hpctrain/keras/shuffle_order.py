"""Keras's own sample order for a shuffled ``fit`` (Keras 3 on torch), drawn exactly as Keras draws it.

Keras on torch feeds arrays through a ``DataLoader`` whose order comes from torch's global RNG:
each ``iter(loader)`` draws one number (the loader's base seed), and a ``RandomSampler`` draws
one more as its pass begins, seeds a generator of its own with it and takes ``randperm(n)``
from that; ``shuffle="batch"`` instead takes ``randperm(len(batch))`` from the global RNG for
each batch. In ``fit`` that gives, on torch's global stream, in this order:

* when ``fit`` has to build the model, its loss or metrics, one batch is drawn to build them:
  the loader's draw and the first batch's (none for ``shuffle=False``);
* each epoch: the loader's draw as the pass begins, the pass's order, and the draw of the next
  loader Keras makes as soon as a pass is done;
* each validation pass: the loader's draw as it begins and, when it went through all batches,
  the next loader's draw.

:class:`KerasOrder` walks a copy of torch's global RNG through the same draws, gives the epoch's
order, and leaves torch's global RNG where Keras's ``fit`` leaves it, so the fit after it (and
whatever else draws from torch's RNG) carries on as it would after Keras's own ``fit``.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import torch

from hpctrain.engine.fit_options import validates_after

@dataclasses.dataclass(frozen=True)
class KerasDraws:
    """What in one Keras ``fit`` draws from torch's global RNG."""

    shuffle: bool | str  # False, True, or "batch": shuffled within each batch
    batch_size: int
    rows: int
    steps_per_epoch: int | None = None  # given: an epoch takes the next steps of a pass that carries on
    validation_draws: int = 0  # per validation pass: 0 without validation data, else 1 or 2
    validation_freq: int | set = 1


def draws_for_fit(*, shuffle, batch_size: int, rows: int, validation_rows: int, steps_per_epoch: int | None = None,
                  validation_batch_size: int | None = None, validation_steps: int | None = None,
                  validation_freq=1) -> KerasDraws:
    """The draws of ``model.fit`` with these arguments; ``rows`` and ``validation_rows`` as Keras
    splits them (see :func:`split_rows`)."""
    validation_draws = 0
    if validation_rows:
        batches = math.ceil(validation_rows / (validation_batch_size or batch_size))
        # A validation pass that reached its last batch makes the next loader at once: one more draw.
        validation_draws = 2 if validation_steps is None or validation_steps >= batches else 1
    if isinstance(validation_freq, (list, tuple)):
        validation_freq = set(validation_freq)
    return KerasDraws(shuffle=shuffle, batch_size=batch_size, rows=rows,
                      steps_per_epoch=steps_per_epoch, validation_draws=validation_draws,
                      validation_freq=validation_freq)


def split_rows(rows: int, validation_split: float, validation_data) -> tuple[int, int]:
    """(training rows, validation rows) as Keras's ``fit`` splits them."""
    if validation_data is not None:
        return rows, len(validation_data[0])
    if validation_split:
        kept = int(math.floor(rows * (1.0 - validation_split)))  # keras's train_validation_split
        return kept, rows - kept
    return rows, 0


def builds_on_first_batch(model) -> bool:
    """Keras's rule (``Trainer._symbolic_build``): ``fit`` draws a first batch to build with when a
    layer, the compiled loss or the compiled metrics are not built yet. Asked before the seam builds them."""
    unbuilt = lambda part: part is not None and not part.built  # noqa: E731
    return (not all(layer.built for layer in model._flatten_layers())
            or unbuilt(getattr(model, "_compile_metrics", None)) or unbuilt(getattr(model, "_compile_loss", None)))


def draw_as_the_build(draws: KerasDraws) -> None:
    """The draws of the first batch Keras's ``fit`` takes to build the model with (then drops)."""
    _loader_draw(None)
    if draws.shuffle == "batch":
        torch.randperm(min(draws.batch_size, draws.rows))
    elif draws.shuffle:
        _loader_draw(None)


class KerasOrder:
    """The engine's shuffler (``permutation(n)`` per pass, ``generator`` saved by checkpoints)
    giving Keras's order. It walks a copy of torch's RNG (rank 0's, so replicas agree) and leaves
    torch's RNG where Keras's would be after each draw."""

    def __init__(self, device: torch.device, communicator, draws: KerasDraws):
        self.generator = torch.Generator()
        self.generator.set_state(_agreed_state(torch.get_rng_state(), communicator))
        self.draws, self.device = draws, device
        self.passes = 0

    def permutation(self, n: int) -> torch.Tensor:
        stream, draws = self.generator, self.draws
        if draws.steps_per_epoch is None or self.passes == 0:  # else the last pass's end made the loader
            _loader_draw(stream)
        order = _batchwise_order(n, draws.batch_size, stream) if draws.shuffle == "batch" else _sampler_order(n, stream)
        self.passes += 1
        torch.set_rng_state(stream.get_state())
        return order.to(self.device)

    def end_epoch(self, draw_count: int) -> None:
        for _ in range(draw_count):
            _loader_draw(self.generator)
        torch.set_rng_state(self.generator.get_state())


class KerasDrawKeeper:
    """Makes the fit's shuffler (``make``, the trainer's ``shuffler_factory``) and, told of each
    epoch's end, draws what Keras draws then: the next pass's loader, the validation pass's.
    Unshuffled fits draw too (their loaders' seeds), straight from torch's RNG."""

    def __init__(self, draws: KerasDraws):
        self.draws = draws
        self.order: KerasOrder | None = None
        self.steps_in_pass = 0
        self.started = False

    def make(self, device: torch.device, communicator=None) -> KerasOrder:
        self.order = KerasOrder(device, communicator, self.draws)
        return self.order

    def epoch_begins(self) -> None:
        if self.order is None and (self.draws.steps_per_epoch is None or not self.started):
            _loader_draw(None)  # else the last pass's end made the loader
        self.started = True

    def epoch_ends(self, epoch: int, stopped_in_epoch: bool) -> None:
        """``stopped_in_epoch``: a batch's callback stopped training, so the pass did not end."""
        draws = self.draws
        count = 0 if stopped_in_epoch else self._pass_ended()
        if draws.validation_draws and validates_after(epoch, draws.validation_freq):
            count += draws.validation_draws
        if self.order is not None:
            self.order.end_epoch(count)
        else:
            for _ in range(count):
                _loader_draw(None)

    def _pass_ended(self) -> int:
        steps, per_pass = self.draws.steps_per_epoch, math.ceil(self.draws.rows / self.draws.batch_size)
        if steps is None:
            return 1
        self.steps_in_pass += min(steps, per_pass - self.steps_in_pass)
        if self.steps_in_pass < per_pass:
            return 0
        self.steps_in_pass = 0
        return 1


def _loader_draw(stream: torch.Generator | None) -> int:
    """One ``torch.empty((), dtype=torch.int64).random_()``: a loader's base seed, a sampler's seed
    (``None``: from torch's global RNG)."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=stream))


def _sampler_order(n: int, stream: torch.Generator) -> torch.Tensor:
    """``RandomSampler``: a generator seeded from the stream, and its ``randperm(n)``."""
    sampler = torch.Generator()
    sampler.manual_seed(_loader_draw(stream))
    return torch.randperm(n, generator=sampler)


def _batchwise_order(n: int, batch_size: int, stream: torch.Generator) -> torch.Tensor:
    """``shuffle="batch"``: batches in order, the rows of each in ``randperm(len(batch))`` order."""
    parts = [start + torch.randperm(min(batch_size, n - start), generator=stream) for start in range(0, n, batch_size)]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)


def _agreed_state(state: torch.Tensor, communicator) -> torch.Tensor:
    """Rank 0's RNG state on every replica: they all walk one order."""
    if communicator is None:
        return state
    words = state.view(torch.int64).to(communicator.device)  # 5056 bytes: 632 whole int64 words
    return communicator.broadcast_(words).cpu().view(torch.uint8)


class KerasDrawCallback(keras.callbacks.Callback):
    """Tells the keeper of each epoch's beginning and end. Listed before the user's callbacks, so a
    stop it sees at an epoch's end was made by a batch's callback, inside the pass."""

    def __init__(self, keeper: KerasDrawKeeper):
        super().__init__()
        self.keeper = keeper

    def on_epoch_begin(self, epoch, logs=None):
        self.keeper.epoch_begins()

    def on_epoch_end(self, epoch, logs=None):
        self.keeper.epoch_ends(epoch, stopped_in_epoch=bool(getattr(self.model, "stop_training", False)))


def keras_draws(trainer, arguments: dict, *, rows: int, validation, batch_size: int,
                builds_first: bool) -> KerasDrawCallback:
    """For one ``fit``: the build's draws made now, the trainer set to shuffle in Keras's order, and
    the callback that draws at each epoch's end. ``arguments`` are ``fit``'s (read, not changed)."""
    training_rows, validation_rows = split_rows(rows, arguments["validation_split"], validation)
    draws = draws_for_fit(shuffle=arguments["shuffle"], batch_size=batch_size, rows=training_rows,
                          validation_rows=validation_rows, steps_per_epoch=arguments["steps_per_epoch"],
                          validation_batch_size=arguments["validation_batch_size"],
                          validation_steps=arguments["validation_steps"], validation_freq=arguments["validation_freq"])
    if builds_first:
        draw_as_the_build(draws)
    keeper = KerasDrawKeeper(draws)
    if trainer is not None:
        trainer.shuffler_factory = keeper.make
    return KerasDrawCallback(keeper)
