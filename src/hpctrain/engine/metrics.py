"""Metrics accumulated on the device: no host sync until a result is read.

Each metric keeps a running ``total`` and ``count`` as device tensors and adds to them in place
every step. Reading ``result()`` is the only sync point; the loop does it at epoch end and when
the progress bar refreshes (a few times a second at most).
"""

from __future__ import annotations

import copy
import math

import torch

from hpctrain.errors import ConfigError, valid_names_hint
from hpctrain.engine.losses import same_rank


class ModelOutput:
    """What the network produced for a batch: logits plus the output activation, if split off.

    The front end may train on logits (softmax folded into the loss, as Keras does for a softmax
    output with cross-entropy); metrics that need probabilities ask for ``probs`` and pay for the
    activation only then.
    """

    __slots__ = ("logits", "activation", "_probs")

    def __init__(self, logits: torch.Tensor, activation=None):
        self.logits = logits
        self.activation = activation
        self._probs = None

    @property
    def probs(self) -> torch.Tensor:
        if self._probs is None:
            self._probs = self.logits if self.activation is None else self.activation(self.logits)
        return self._probs


class Metric:
    """A running, sample-weighted mean of a per-sample quantity."""

    name = "metric"

    def __init__(self, name: str | None = None):
        if name is not None:
            self.name = name
        self.total = None
        self.count = None

    def bind(self, device: torch.device) -> "Metric":
        self.total = torch.zeros((), dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
        self.count = torch.zeros((), dtype=self.total.dtype, device=device)
        return self

    def reset(self) -> None:
        self.total.zero_()
        self.count.zero_()

    def update(self, output: ModelOutput, target: torch.Tensor) -> None:
        values = self.per_sample(output, target)
        self.total.add_(values.sum())
        self.count.add_(values.numel())

    def per_sample(self, output: ModelOutput, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update_weighted(self, output: ModelOutput, target: torch.Tensor, weights: torch.Tensor) -> None:
        """With sample weights: compiled metrics ignore them, as in Keras (only losses are weighted)."""
        self.update(output, target)

    def result(self) -> float:
        # Host sync: reads the device accumulators.
        count = float(self.count)
        return float(self.total) / count if count else math.nan  # no samples: no value, not a perfect 0


class MeanTracker(Metric):
    """The running mean of a batch-mean value (the loss), weighted by batch size as Keras does."""

    name = "loss"

    def update_value(self, value: torch.Tensor, batch_size: int) -> None:
        self.total.add_(value.detach(), alpha=batch_size)
        self.count.add_(batch_size)


def class_indices(target: torch.Tensor) -> torch.Tensor:
    """Class ids from either index labels (N,) or one-hot/soft rows (N, C)."""
    if target.is_floating_point() and target.dim() > 1 and target.shape[-1] > 1:
        return target.argmax(dim=-1)
    return target.reshape(-1)


def dense_target(target: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Class-index labels as one-hot rows shaped like ``output`` (labels may be stored as indices);
    ``(N,)`` labels of a one-unit ``(N, 1)`` output (or the reverse) with its rank, as Keras aligns them."""
    if target.dtype == torch.int64 and output.dim() == target.dim() + 1 and output.shape[-1] > 1:
        return torch.nn.functional.one_hot(target, output.shape[-1]).to(output.dtype)
    if target.dim() != output.dim() and target.shape[0] == output.shape[0] and target.numel() == output.numel():
        return target.reshape(output.shape)
    return target


class ClassAccuracy(Metric):
    """Top-1 accuracy of a multi-class output; softmax keeps the argmax, so logits suffice."""

    name = "accuracy"

    def per_sample(self, output, target):
        return (output.logits.argmax(dim=-1) == class_indices(target)).to(self.total.dtype)


class BinaryAccuracy(Metric):
    name = "binary_accuracy"

    def __init__(self, name: str | None = None, threshold: float = 0.5):
        super().__init__(name)
        self.threshold = threshold

    def per_sample(self, output, target):
        return ((output.probs > self.threshold) == (target > 0.5)).to(self.total.dtype)


class MeanSquaredError(Metric):
    name = "mean_squared_error"

    def per_sample(self, output, target):
        return (output.probs - dense_target(target, output.probs)).square().mean(dim=-1)


class MeanAbsoluteError(Metric):
    name = "mean_absolute_error"

    def per_sample(self, output, target):
        return (output.probs - dense_target(target, output.probs)).abs().mean(dim=-1)


def keras_y_true(target: torch.Tensor, output: torch.Tensor, loss) -> torch.Tensor:
    """The labels as a Keras metric would see them: one-hot rows again where the engine stored
    categorical cross-entropy's one-hot labels as class indices."""
    if getattr(loss, "sparse", None) is False and target.dtype == torch.int64:
        return dense_target(target, output)
    return target


class FunctionMetric(Metric):
    """A metric function ``fn(y_true, y_pred) -> per-sample values``, averaged over samples (Keras's
    ``MeanMetricWrapper``); ``y_true`` is cast to float as Keras casts it."""

    def __init__(self, fn, loss=None):
        super().__init__(getattr(fn, "__name__", type(fn).__name__))
        self.fn = fn
        self.loss = loss

    def per_sample(self, output, target):
        y_true = keras_y_true(target, output.probs, self.loss).to(output.probs.dtype)
        return torch.as_tensor(self.fn(*same_rank(y_true, output.probs)), dtype=self.total.dtype)


class StatefulMetric(Metric):
    """A Keras-style metric object (``update_state``/``result``/``reset_state``) run by the engine.

    Each pass (train, validation) gets its own copy of the user's object, so their states stay
    apart. ``update_state`` runs once per batch, as in Keras; the result is read (a host sync)
    only with the other metrics. Across replicas the result is that of the variables summed
    (or averaged, for ``aggregation="mean"``) over the replicas, as Keras aggregates them.
    """

    batchwise = True

    def __init__(self, metric, loss=None):
        super().__init__(metric.name)
        self.metric = metric
        self.loss = loss

    def bind(self, device):
        # A front end may know a cheaper or safer copy than deepcopy (Keras pickles a metric
        # through its saving code, which fails for unregistered classes): ``fresh_copy()``.
        fresh_copy = getattr(self.metric, "fresh_copy", None)
        self.metric = fresh_copy() if fresh_copy is not None else copy.deepcopy(self.metric)
        if hasattr(self.metric, "to_device"):
            self.metric.to_device(device)
        # result() / 1: the engine reads every metric as total / count.
        self.count = torch.ones((), dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
        return self

    def reset(self):
        self.metric.reset_state()

    def update(self, output, target):
        self.metric.update_state(keras_y_true(target, output.probs, self.loss), output.probs)

    @property
    def total(self):
        if self.count is None:  # not bound yet
            return None
        return torch.as_tensor(self.metric.result(), dtype=self.count.dtype, device=self.count.device).reshape(())

    @total.setter
    def total(self, value):
        pass  # the state lives in the metric's own variables

    def reduced_pair(self, communicator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(result, 1)`` over all replicas' state, divided by the replica count so that the sum
        ``MetricSet.results`` takes over replicas gives it back. Every replica must call it."""
        variables = self.metric.variables
        saved = [variable.value.clone() for variable in variables]
        for variable in variables:
            communicator.all_reduce_sum_(variable.value)  # sync point, with every replica
            if getattr(variable, "aggregation", "sum") == "mean":
                variable.value.div_(communicator.world_size)
        try:
            return self.total / communicator.world_size, self.count / communicator.world_size
        finally:  # this replica carries on accumulating its own share
            for variable, value in zip(variables, saved):
                variable.value.copy_(value)


class MetricSet:
    """The loss tracker and the compiled metrics of one pass (train or test)."""

    def __init__(self, metrics: list[Metric], device: torch.device, prefix: str = "", communicator=None):
        self.communicator = communicator  # sums the accumulators over replicas when read
        self.loss = MeanTracker().bind(device)
        # Copies: the train and the validation pass each keep their own accumulators.
        self.metrics = [copy.copy(m).bind(device) for m in metrics]
        self.prefix = prefix

    def reset(self) -> None:
        self.loss.reset()
        for metric in self.metrics:
            metric.reset()

    @torch.no_grad()
    def update(self, loss: torch.Tensor, output: ModelOutput, target: torch.Tensor, weights=None) -> None:
        self.loss.update_value(loss, output.logits.shape[0])
        for metric in self.metrics:
            if weights is None:
                metric.update(output, target)
            else:
                metric.update_weighted(output, target, weights)

    def local_results(self) -> dict[str, float]:
        """This replica's running means, with no collective: what rank 0's progress bar reads
        (a collective must be joined by every rank, and only rank 0 refreshes a bar)."""
        return self.results(across_replicas=False)

    def slot(self, rows: int, target: torch.Tensor):
        """Where a step may write its logits for deferred metrics; ``None``: update eagerly."""
        return None

    def add_penalty(self, value: torch.Tensor, batch_size: int) -> None:
        """Adds a weight penalty to the reported loss without counting samples twice."""
        self.loss.total.add_(value.detach(), alpha=batch_size)

    def results(self, across_replicas: bool = True) -> dict[str, float]:
        """The running means. ``across_replicas=False``: this replica's alone, with no collective
        (for a progress bar that only rank 0 refreshes: a collective must be joined by every rank)."""
        trackers = [self.loss, *self.metrics]
        across = self.communicator is not None and across_replicas
        pairs = [t.reduced_pair(self.communicator) if across and isinstance(t, StatefulMetric) else (t.total, t.count)
                 for t in trackers]
        totals = torch.stack([value for pair in pairs for value in pair])
        if across:
            # Sums of sums and of counts: exact global means, not a mean of per-replica means.
            self.communicator.all_reduce_sum_(totals)
        values = totals.tolist()  # host sync
        names = ["loss", *(m.name for m in self.metrics)]
        # No samples counted (every step of an epoch skipped): NaN, which no callback takes for a best.
        return {self.prefix + name: (values[2 * i] / values[2 * i + 1] if values[2 * i + 1] else math.nan)
                for i, name in enumerate(names)}


_METRICS_BY_NAME = {
    "categorical_accuracy": ClassAccuracy,
    "sparse_categorical_accuracy": ClassAccuracy,
    "binary_accuracy": BinaryAccuracy,
    "mse": MeanSquaredError,
    "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError,
    "mean_absolute_error": MeanAbsoluteError,
}
METRIC_NAMES = ("accuracy", "acc", *_METRICS_BY_NAME)


def resolve_metric(spec, loss, output_shape: tuple[int, ...]) -> Metric:
    """A metric from its name, with "accuracy"/"acc" resolved as Keras does.

    Keras picks binary accuracy for a one-unit output (or a binary cross-entropy loss) and
    top-1 class accuracy otherwise; class accuracy here reads index or one-hot labels alike.
    """
    if isinstance(spec, Metric):
        return spec
    if hasattr(spec, "update_state") and hasattr(spec, "result"):
        return StatefulMetric(spec, loss)
    if callable(spec) and not isinstance(spec, type):
        return FunctionMetric(spec, loss)
    if not isinstance(spec, str):
        raise ConfigError(f"a metric must be a name, a Metric object or a function fn(y_true, y_pred); got "
                          f"{type(spec).__name__}.")
    key = spec.lower()
    if key in ("accuracy", "acc"):
        binary = output_shape[-1] == 1 or getattr(loss, "name", "") == "binary_crossentropy"
        return BinaryAccuracy(name=spec) if binary else ClassAccuracy(name=spec)
    if key in _METRICS_BY_NAME:
        return _METRICS_BY_NAME[key](name=spec)
    raise ConfigError(f"unknown metric {spec!r}; {valid_names_hint(METRIC_NAMES)}.")


class DeferredMetricSet(MetricSet):
    """Steps write their logits into one buffer; loss and metrics are computed from it when read.

    That is one bulk computation per progress refresh instead of ~5 small kernel calls per step.
    It needs a loss that is a mean of per-sample losses (every built-in loss is), so that the loss
    of a chunk of rows equals the batch-size-weighted mean of its batches' losses. The buffer holds
    at most ``DEFERRED_BUFFER_ELEMENTS`` values and is folded into the accumulators when full.
    """

    def __init__(self, metrics, device, *, loss, output_activation, rows: int, width: tuple, prefix: str = "",
                 communicator=None):
        super().__init__(metrics, device, prefix, communicator)
        self.loss_fn = loss
        self.output_activation = output_activation
        capacity = max(1, min(rows, DEFERRED_BUFFER_ELEMENTS // max(1, math.prod(width))))
        self._allocate(capacity, width, device)
        self.batchwise = any(getattr(m, "batchwise", False) for m in self.metrics)
        self.filled = 0
        self.targets = []

    def _allocate(self, rows: int, width: tuple, device) -> None:
        self.buffer = torch.empty(rows, *width, device=device)
        self.capacity = rows
        self._views = {}  # (first row, rows) -> view: the same slots recur every epoch; a slice is ~1 us

    def slot(self, rows, target):
        filled = self.filled
        # A stateful metric's update_state must see each batch on its own, as in Keras.
        if filled + rows > self.capacity or filled and self.batchwise:
            self.flush()
            filled = 0
        if rows > self.capacity:
            self._allocate(rows, self.buffer.shape[1:], self.buffer.device)
        view = self._views.get((filled, rows))
        if view is None:
            view = self._views[filled, rows] = self.buffer[filled:filled + rows]
        self.filled = filled + rows
        self.targets.append(target)
        return view

    def flush(self) -> None:
        if not self.filled:
            return
        target = self.targets[0] if len(self.targets) == 1 else torch.cat(self.targets)
        self._update_from(self.buffer[:self.filled], target)
        self.filled = 0
        self.targets.clear()

    def record(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate rows computed elsewhere (a CUDA graph's output buffer), after any pending ones."""
        self.flush()
        self._update_from(logits, target)

    @torch.no_grad()
    def _update_from(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        self.loss.update_value(self.loss_fn(logits, target), logits.shape[0])
        output = ModelOutput(logits, self.output_activation)
        for metric in self.metrics:
            metric.update(output, target)

    def reset(self) -> None:
        super().reset()
        self.filled = 0
        self.targets.clear()

    def results(self, across_replicas: bool = True) -> dict[str, float]:
        self.flush()
        return super().results(across_replicas)


DEFERRED_BUFFER_ELEMENTS = 1 << 24  # 64 MiB of float32 logits


class OutputMetric(Metric):
    """A metric of one output of a multi-output model, reported as ``<output>_<metric>``.

    The wrapped metric keeps the accumulators; this one shares them, so results read as usual.
    """

    def __init__(self, metric: Metric, index: int, name: str):
        super().__init__(name)
        self.metric = metric
        self.index = index

    def bind(self, device: torch.device) -> "OutputMetric":
        self.metric = copy.copy(self.metric).bind(device)  # train and validation sets keep their own
        self.total, self.count = self.metric.total, self.metric.count
        return self

    def reset(self) -> None:
        self.metric.reset()

    def update(self, output: ModelOutput, target) -> None:
        self.metric.update(ModelOutput(output.logits.parts[self.index]), target.parts[self.index])
