"""Checks made once, before the first step, so bad input fails fast with a message that helps."""

from __future__ import annotations

import contextlib

import torch

from hpctrain.arguments import is_number, is_whole_number
from hpctrain.engine.data import Columns
from hpctrain.errors import ConfigError, HpctrainError, InputError


def check_whole_number(value, *, name: str, minimum: int = 1, hint: str = "") -> int:
    if not is_whole_number(value) or value < minimum:
        raise ConfigError(f"{name} must be a whole number >= {minimum}; got {value!r}.{(' ' + hint) if hint else ''}")
    return int(value)


def check_positive_int(value, *, name: str, hint: str = "") -> int:
    return check_whole_number(value, name=name, hint=hint)


def check_batch_size(batch_size) -> int:
    return check_positive_int(batch_size, name="batch_size", hint="A typical value is 32.")


def check_inference_batch_size(batch_size, *, default: int) -> int | None:
    """``evaluate``/``predict``'s ``batch_size``: ``None`` (the default) or a whole number >= 1."""
    if batch_size is None:
        return None
    if not is_whole_number(batch_size) or batch_size < 1:
        raise ConfigError(f"batch_size should be a positive integer; got {batch_size!r}. Give the number of samples "
                          f"per batch as a whole number >= 1 (such as 32), or leave it out for {default}.")
    return int(batch_size)


def check_fraction(value, *, name: str) -> float:
    if not is_number(value) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1); got {value!r}. For example 0.2 keeps 20% aside.")
    return float(value)


def check_same_length(x: torch.Tensor, y: torch.Tensor | None, *, x_name="x", y_name="y") -> None:
    if x.shape[0] == 0:
        raise InputError(f"{x_name} has no samples (shape {tuple(x.shape)}); give at least one row.")
    if y is not None and y.shape[0] != x.shape[0]:
        raise InputError(
            f"{x_name} has {x.shape[0]} samples but {y_name} has {y.shape[0]}; they must have one label "
            "per sample, in the same order. Check that both come from the same split."
        )


def check_not_several_inputs(x, y, *, name: str = "x") -> None:
    """A list of arrays whose lengths all match the labels' is several inputs, not rows (which
    the length check would report as a confusing count of samples)."""
    if not isinstance(x, (list, tuple)) or len(x) < 2 or y is None or len(x) == len(y):
        return
    if all(hasattr(part, "shape") and len(part.shape) >= 1 and part.shape[0] == len(y) for part in x):
        raise InputError(f"{name} is a list of {len(x)} arrays of {len(y)} rows each: several inputs. A module on the "
                         "native API takes one tensor; concatenate the inputs (np.concatenate(x, axis=1)) and split "
                         "them in forward, or use a Keras functional model with several Input()s.")


def check_finite(x: torch.Tensor, *, name: str) -> None:
    if isinstance(x, Columns):
        for i, part in enumerate(x.parts):
            check_finite(part, name=f"{name}[{i}]")
        return
    if not x.is_floating_point():
        return
    # A NaN or Inf anywhere makes the sum non-finite, so a finite sum clears the data in one
    # read-only pass (~8 ms for MNIST's 188 MB; torch.isfinite makes five passes, ~130 ms). Only a
    # non-finite sum, a bad value or an overflow, pays for the exact check.
    if bool(torch.isfinite(x.sum())):
        return
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return
    bad_row = int((~finite).reshape(x.shape[0], -1).any(dim=1).nonzero()[0])
    kind = "NaN" if bool(torch.isnan(x[bad_row]).any()) else "Inf"
    count = int((~finite).sum())
    raise InputError(
        f"{name} contains {count} non-finite value(s) ({kind} first at sample {bad_row}); training on them "
        "would make the loss NaN. Clean or impute them first, e.g. np.nan_to_num(x)."
    )


def probe_output_shape(module: torch.nn.Module, x: torch.Tensor, *, name: str = "x") -> tuple[int, ...]:
    """Run the model on two samples to learn its output shape, turning shape errors into advice.

    A module with ``output_shape_of(x)`` (a front end's model that can trace its shape without
    running, such as a Keras model) is asked that instead, where it can answer."""
    traced = getattr(module, "output_shape_of", None)
    if traced is not None:
        with contextlib.suppress(Exception):  # where it cannot, running the model below says what is wrong
            return traced(x)
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            output = module(x[:2])
    except HpctrainError:
        raise  # a layer's own message already says what is wrong
    except (RuntimeError, ValueError) as exc:
        raise InputError(
            f"the model could not run on {name} with {tuple(x.shape[1:])} features per sample ({exc}). "
            "Check that the number of features matches the model's first layer."
        ) from exc
    finally:
        module.train(was_training)
    if isinstance(output, Columns):
        return output.shapes
    if not isinstance(output, torch.Tensor):
        raise InputError(f"the model returned a {type(output).__name__}, not a tensor; hpctrain trains a module "
                         "whose forward returns one tensor (the loss and metrics take it). Wrap the module so "
                         "that it returns the output to train on, e.g. its ['logits'] entry.")
    return tuple(output.shape)
