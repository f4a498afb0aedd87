"""Checks of what the native API is given (a loss, a module, a DataLoader, a weights file), so
that each mistake is named in an hpctrain error instead of surfacing as a raw error from inside."""

from __future__ import annotations

import os
import pickle

import torch

from hpctrain.engine import validation
from hpctrain.engine.losses import CallableLoss, CrossEntropy, Loss, MeanAbsoluteError, MeanSquaredError, from_torch
from hpctrain.errors import CheckpointError, ConfigError, InputError, valid_names_hint

# Losses the native API takes by name, with torch's meaning: cross_entropy takes logits, as
# torch.nn.CrossEntropyLoss does, with class indices or class probabilities as targets.
LOSS_NAMES = {
    "cross_entropy": lambda: CrossEntropy(sparse=None, from_logits=True),
    "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
}


def resolve_loss(loss) -> Loss:
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        if loss not in LOSS_NAMES:
            raise ConfigError(f"unknown loss {loss!r}; {valid_names_hint(LOSS_NAMES)}. Or pass a torch loss such "
                              "as torch.nn.CrossEntropyLoss(), or any function fn(prediction, target).")
        return LOSS_NAMES[loss]()
    if not callable(loss):
        raise ConfigError(f"loss must be a Loss, a function fn(prediction, target) or a name such as 'mse'; got "
                          f"{type(loss).__name__}. For example torch.nn.CrossEntropyLoss().")
    return from_torch(loss) or CallableLoss(loss)


def check_trainable(module: torch.nn.Module) -> None:
    """Before ``fit``: a module with nothing to train would fail inside the optimizer or the step."""
    if not any(param.requires_grad for param in module.parameters()):
        count = sum(1 for _ in module.parameters())
        what = "no parameters" if count == 0 else f"{count} parameter(s), all frozen (requires_grad=False)"
        raise ConfigError(f"the module {type(module).__name__} has no parameters to train ({what}). fit needs at "
                          "least one parameter with requires_grad=True; evaluate and predict need none.")


def first_batch(loader):
    """The first ``(x, y)`` of a :class:`~hpctrain.engine.data.LoaderData`'s pass."""
    batch = next(iter(loader.batches()), None)
    if batch is None:
        raise InputError(f"the DataLoader gave no batches ({_why_empty(loader.loader)}); give it at least one "
                         "sample, or check the dataset's __len__ and the sampler.")
    return batch


def _why_empty(loader) -> str:
    try:
        samples = len(loader.dataset)
    except TypeError:
        return "its dataset yielded nothing"
    if samples and getattr(loader, "drop_last", False):
        return f"its dataset has {samples} samples, fewer than batch_size={loader.batch_size} with drop_last=True"
    return f"its dataset has {samples} samples"


def explain_forward_error(module: torch.nn.Module, inputs: torch.Tensor) -> None:
    """After a forward raised on ``inputs``: an :class:`InputError` where two samples fail as well
    (the inputs do not fit the model); otherwise the caller re-raises the original error."""
    validation.probe_output_shape(module, inputs, name="x")


def load_state(module: torch.nn.Module, path, device: torch.device) -> None:
    """``Trainer.load_weights``: a ``state_dict`` that ``save_weights`` (or ``torch.save``) wrote."""
    path = os.fspath(path)
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"no such file: {path}; give the path save_weights wrote to.") from exc
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a weights file that save_weights wrote (torch.load with "
                              f"weights_only=True refused it: {str(exc).splitlines()[0]}). Code in pickle files is "
                              "never run; give a file written by save_weights or torch.save(module.state_dict()).") \
            from exc
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state_dict of tensors; give a file "
                              "written by save_weights or torch.save(module.state_dict()).")
    _check_same_names(module, state, path)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"{path} does not fit this model ({exc}). Build the model as it was when the weights were "
                         "saved.") from exc


def _check_same_names(module: torch.nn.Module, state: dict, path: str) -> None:
    expected = list(module.state_dict())
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    if missing or unexpected:
        raise InputError(f"{path} holds the weights of another model: missing {', '.join(missing) or 'none'}; "
                         f"unexpected {', '.join(unexpected) or 'none'}. Build the model as it was when the weights "
                         "were saved.")
