"""Losses in PyTorch's argument order ``loss(prediction, target)``, each with its label rules.

Every loss here returns the mean over the batch of per-sample losses, as Keras's default
``sum_over_batch_size`` reduction does. ``prepare_targets`` runs once before training: it checks
the labels against the model's output and converts them to the cheapest exact form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hpctrain.errors import ConfigError, InputError, warn

# Keras clips probabilities to [eps, 1 - eps] before taking logs.
KERAS_EPSILON = 1e-7


class Loss:
    """Base class: subclasses set ``name`` and implement ``__call__`` and ``prepare_targets``."""

    name = "loss"
    from_logits = False

    def __call__(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def per_sample(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One loss value per sample (shape ``(N, ...)``); their mean is ``__call__``."""
        raise ConfigError(f"the loss {self.name} gives only a batch mean, so it cannot weight samples; use a "
                          "built-in or Keras loss, or a function returning one value per sample.")

    def weighted(self, prediction, target, weights: torch.Tensor) -> torch.Tensor:
        """Keras's ``sum_over_batch_size`` with sample weights: ``sum(w * loss) / N``.

        Keras divides by the number of loss values, not by the sum of the weights, so a weight
        of 2 counts a sample twice and weights of 0 shrink the batch loss.
        """
        weighted = weighted_values(self.per_sample(prediction, target), weights)
        return weighted.sum() / weighted.numel()

    def prepare_targets(self, y: torch.Tensor, output_shape: tuple[int, ...]) -> torch.Tensor:
        return y

    def with_logits(self) -> "Loss":
        """The same loss computed from pre-activation logits (only for losses that have one)."""
        raise NotImplementedError(f"{self.name} has no logits form")


class CrossEntropy(Loss):
    """Categorical cross-entropy with class-index or one-hot/soft targets.

    ``sparse=True`` is Keras's ``sparse_categorical_crossentropy``; ``sparse=None`` takes either
    form silently, as ``torch.nn.CrossEntropyLoss`` does. Exactly one-hot targets are turned into
    class indices once, before training: the same loss, a tenth of the label memory and a cheaper
    kernel per step.
    """

    def __init__(self, *, sparse: bool | None, from_logits: bool = False):
        self.sparse = sparse
        self.from_logits = from_logits
        self.name = "sparse_categorical_crossentropy" if sparse else "categorical_crossentropy"

    def with_logits(self) -> "CrossEntropy":
        return CrossEntropy(sparse=self.sparse, from_logits=True)

    def __call__(self, prediction, target):
        if self.from_logits:
            return _logits_cross_entropy(prediction, target, "mean")
        log_probs = _clipped_log_probs(prediction)
        if target.dtype == torch.int64:
            return F.nll_loss(log_probs, target)
        return -(target * log_probs).sum(dim=-1).mean()

    def per_sample(self, prediction, target):
        if self.from_logits:
            return _logits_cross_entropy(prediction, target, "none")
        log_probs = _clipped_log_probs(prediction)
        if target.dtype == torch.int64:
            return F.nll_loss(log_probs, target, reduction="none")
        return -(target * log_probs).sum(dim=-1)

    def prepare_targets(self, y, output_shape):
        classes = output_shape[-1]
        if y.dim() >= 2 and y.shape[-1] == classes and classes > 1:
            y = y.to(torch.float32)  # integer one-hot rows are one-hot rows too
            if self.sparse:
                raise InputError(
                    f"sparse_categorical_crossentropy expects integer class labels shaped (N,) or (N, 1); "
                    f"got labels shaped {tuple(y.shape)} (one-hot?). Use loss='categorical_crossentropy' "
                    "for one-hot labels, or pass y.argmax(-1)."
                )
            return _one_hot_to_indices(y)
        if y.dim() == 2 and y.shape[-1] == 1 or y.dim() == 1:
            indices = y.reshape(-1)
            if indices.is_floating_point():
                if not torch.equal(indices, indices.round()):
                    raise InputError(_float_label_shape_message(self.name, y, classes))
                indices = indices.to(torch.int64)
            if self.sparse is False:
                warn(
                    f"categorical_crossentropy was given integer labels shaped {tuple(y.shape)}, not one-hot "
                    f"rows of width {classes}; treating them as class indices (as "
                    "sparse_categorical_crossentropy would). Pass one-hot labels (utils.to_categorical) "
                    "or use loss='sparse_categorical_crossentropy' to silence this warning."
                )
            _check_class_range(indices, classes)
            return indices
        raise InputError(_float_label_shape_message(self.name, y, classes))


class BinaryCrossentropy(Loss):
    name = "binary_crossentropy"

    def __init__(self, *, from_logits: bool = False):
        self.from_logits = from_logits

    def with_logits(self) -> "BinaryCrossentropy":
        return BinaryCrossentropy(from_logits=True)

    def __call__(self, prediction, target):
        if self.from_logits:
            return F.binary_cross_entropy_with_logits(prediction, target)
        probs = prediction.clamp(KERAS_EPSILON, 1.0 - KERAS_EPSILON)
        return F.binary_cross_entropy(probs, target)

    def per_sample(self, prediction, target):
        if self.from_logits:
            return F.binary_cross_entropy_with_logits(prediction, target, reduction="none").mean(dim=-1)
        probs = prediction.clamp(KERAS_EPSILON, 1.0 - KERAS_EPSILON)
        return F.binary_cross_entropy(probs, target, reduction="none").mean(dim=-1)

    def prepare_targets(self, y, output_shape):
        y = _match_output_shape(self.name, y.to(torch.float32), output_shape)
        outside = (y < 0) | (y > 1)
        if bool(outside.any()):
            bad = y[outside][0].item()
            raise InputError(
                f"binary_crossentropy needs labels between 0 and 1; found {bad}. "
                "Map the labels to 0/1 (or probabilities) first."
            )
        return y


class MeanSquaredError(Loss):
    name = "mean_squared_error"

    def __call__(self, prediction, target):
        return F.mse_loss(prediction, target)

    def per_sample(self, prediction, target):
        return (prediction - target).square().mean(dim=-1)

    def prepare_targets(self, y, output_shape):
        y = _match_output_shape(self.name, y.to(torch.float32), output_shape)
        _check_squarable(y)
        return y


class MeanAbsoluteError(Loss):
    name = "mean_absolute_error"

    def __call__(self, prediction, target):
        return F.l1_loss(prediction, target)

    def per_sample(self, prediction, target):
        return (prediction - target).abs().mean(dim=-1)

    def prepare_targets(self, y, output_shape):
        return _match_output_shape(self.name, y.to(torch.float32), output_shape)


def from_torch(loss) -> Loss | None:
    """The engine loss equal to a PyTorch loss module or function in its default form, else ``None``.

    Known losses can train on the static executor; anything else is a :class:`CallableLoss`.
    """
    plain_mean = getattr(loss, "reduction", "mean") == "mean" and getattr(loss, "weight", None) is None
    if (type(loss) is torch.nn.CrossEntropyLoss and plain_mean and loss.label_smoothing == 0.0
            and loss.ignore_index == -100):  # an ignored class changes the loss; torch's own runs it then
        return CrossEntropy(sparse=None, from_logits=True)
    if loss is F.cross_entropy:
        return CrossEntropy(sparse=None, from_logits=True)
    if type(loss) is torch.nn.BCEWithLogitsLoss and plain_mean and loss.pos_weight is None:
        return BinaryCrossentropy(from_logits=True)
    if type(loss) is torch.nn.MSELoss and plain_mean or loss is F.mse_loss:
        return MeanSquaredError()
    if type(loss) is torch.nn.L1Loss and plain_mean or loss is F.l1_loss:
        return MeanAbsoluteError()
    return None


class CallableLoss(Loss):
    """Any ``fn(prediction, target) -> scalar`` (a ``torch.nn`` loss module, a function)."""

    def __init__(self, fn):
        self.fn = fn
        self.name = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, prediction, target):
        return self.fn(prediction, target)

    def prepare_targets(self, y: torch.Tensor, output_shape: tuple[int, ...]) -> torch.Tensor:
        """Integer targets shaped like the output (regression values, multi-label 0/1) as float32,
        as torch's elementwise losses (Huber, smooth L1, BCE) need them; class indices, shaped
        otherwise, stay integers. Shapes are left as given: the function may expect them so."""
        if not y.is_floating_point() and tuple(y.shape[1:]) == tuple(output_shape[1:]):
            return y.to(torch.float32)
        return y


def same_rank(y_true: torch.Tensor, y_pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keras's alignment of labels and predictions whose ranks differ by one trailing unit axis:
    ``(N,)`` labels against ``(N, 1)`` predictions become ``(N, 1)``, so that ``y_true - y_pred``
    does not broadcast to ``(N, N)``. Other shapes (class indices against class scores) pass as
    they are."""
    if y_true.dim() == y_pred.dim() + 1 and y_true.shape[-1] == 1:
        return (y_true, y_pred.unsqueeze(-1)) if y_pred.dim() == 1 else (y_true.squeeze(-1), y_pred)
    if y_pred.dim() == y_true.dim() + 1 and y_pred.shape[-1] == 1:
        return (y_true.unsqueeze(-1), y_pred) if y_true.dim() == 1 else (y_true, y_pred.squeeze(-1))
    return y_true, y_pred


def weighted_values(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``values * weights`` with one weight per sample broadcast over each sample's values."""
    weights = weights.to(values.dtype)
    if values.dim() > 1:
        weights = weights.reshape(weights.shape[0], *([1] * (values.dim() - 1)))
    return values * weights


# Below 16 classes PyTorch's CPU log_softmax takes a scalar path: 4.5 ms for 60,000 x 10 logits,
# against 0.9 ms for logsumexp and a gather, which give the same values. Deferred metrics and
# evaluation take the loss of many rows at once; small batches keep the one fused call.
_BULK_ROWS, _SCALAR_PATH_CLASSES = 4096, 16


def _logits_cross_entropy(logits: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
    if (target.dtype != torch.int64 or logits.dim() != 2 or logits.device.type != "cpu"
            or logits.shape[0] < _BULK_ROWS or logits.shape[1] >= _SCALAR_PATH_CLASSES):
        return F.cross_entropy(logits, target, reduction=reduction)
    per_sample = torch.logsumexp(logits, dim=1) - logits.gather(1, target.unsqueeze(1)).squeeze(1)
    return per_sample if reduction == "none" else per_sample.mean()


def _clipped_log_probs(probs: torch.Tensor) -> torch.Tensor:
    # Keras renormalises the rows and clips before the log, so a saturated softmax gives a
    # large finite loss rather than inf.
    probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs.clamp(KERAS_EPSILON, 1.0 - KERAS_EPSILON).log()


def _one_hot_to_indices(y: torch.Tensor) -> torch.Tensor:
    is_one_hot = bool(((y == 0) | (y == 1)).all()) and bool((y.sum(dim=-1) == 1).all())
    return y.argmax(dim=-1) if is_one_hot and y.dim() == 2 else y


def _check_class_range(indices: torch.Tensor, classes: int) -> None:
    if indices.numel() == 0:
        return
    low, high = int(indices.min()), int(indices.max())
    if low < 0 or high >= classes:
        bad = low if low < 0 else high
        raise InputError(
            f"label {bad} is out of range for a model with {classes} outputs: class labels must lie "
            f"in 0..{classes - 1}. Check the labels, or give the last layer as many units as there "
            f"are classes (labels seen: {low}..{high})."
        )


# float32's largest square root, with margin: a squared error of targets past it overflows to inf
# while its gradient stays finite, a loss no per-step gradient check sees.
LARGEST_SQUARABLE = 1e18


def _check_squarable(y: torch.Tensor) -> None:
    largest = float(y.abs().max()) if y.numel() else 0.0  # one pass, once per fit
    if largest > LARGEST_SQUARABLE:
        raise InputError(f"the labels go up to {largest:.3g} in magnitude: their squared error overflows float32 "
                         f"(beyond {LARGEST_SQUARABLE:.0e}), so the loss would be inf. Rescale the labels (e.g. "
                         "divide by their standard deviation) and scale the predictions back.")


def _match_output_shape(loss_name: str, y: torch.Tensor, output_shape) -> torch.Tensor:
    per_sample = tuple(output_shape[1:])
    if tuple(y.shape[1:]) == per_sample:
        return y
    if y.dim() == 1 and per_sample == (1,):
        return y.reshape(-1, 1)
    raise InputError(
        f"{loss_name} needs labels shaped like the model's output (N, {', '.join(map(str, per_sample))}); "
        f"got labels shaped {tuple(y.shape)}. Reshape the labels, or change the last layer's units."
    )


def _float_label_shape_message(loss_name: str, y: torch.Tensor, classes: int) -> str:
    return (
        f"{loss_name} needs one-hot labels shaped (N, {classes}) or integer class labels shaped (N,) "
        f"or (N, 1) for a model with {classes} outputs; got {y.dtype} labels shaped {tuple(y.shape)}. "
        "Use utils.to_categorical(labels, num_classes) for one-hot labels, or pass integer class ids."
    )


class MultiOutputLoss(Loss):
    """One loss per model output, summed with weights (Keras's ``compile(loss=[...], loss_weights=...)``).

    Predictions and targets arrive as :class:`~hpctrain.engine.data.Columns`, one part per output.
    """

    name = "loss"

    def __init__(self, losses: list[Loss], weights: list[float], output_names: list[str]):
        self.losses = list(losses)
        self.weights = [float(w) for w in weights]
        self.output_names = list(output_names)

    def __call__(self, prediction, target):
        return self._combined(prediction, target, lambda loss, part, part_target: loss(part, part_target))

    def weighted(self, prediction, target, weights):
        """Each output's loss weighted by the same sample weights, as Keras applies one array to all."""
        return self._combined(prediction, target,
                              lambda loss, part, part_target: loss.weighted(part, part_target, weights))

    def _combined(self, prediction, target, output_loss):
        total = None
        for loss, weight, part, part_target in zip(self.losses, self.weights, prediction.parts, target.parts):
            term = output_loss(loss, part, part_target)
            term = term if weight == 1.0 else term * weight
            total = term if total is None else total + term
        return total

    def prepare_targets(self, y, output_shape):
        from hpctrain.engine.data import Columns

        count = len(self.losses)
        if not isinstance(y, Columns) or len(y.parts) != count:
            given = f"{len(y.parts)} arrays" if isinstance(y, Columns) else "one array"
            raise InputError(
                f"the model has {count} outputs ({', '.join(self.output_names)}) but y is {given}; give y as a "
                f"list of {count} arrays in output order, or a dict keyed by output name."
            )
        return Columns(loss.prepare_targets(part, shape)
                       for loss, part, shape in zip(self.losses, y.parts, output_shape))
