"""Which Keras calls the engine runs, and why the others run on Keras's own loop.

Each ``why_…`` returns ``None`` when the engine runs the call exactly as Keras would, else the
reason in words; the seam then calls Keras's own method, and ``verbose`` says so once per model.
"""

from __future__ import annotations

import keras
import numpy as np
import torch

from hpctrain.keras.callback_bridge import watches
from hpctrain.keras.optimizer_map import why_not_mapped  # noqa: F401  (explained by the plan)

_STEP_METHODS = ("train_step", "test_step", "predict_step", "compute_loss", "compute_metrics")


def _overridden(model, names) -> list[str]:
    return [name for name in names if getattr(type(model), name) is not getattr(keras.Model, name)]


def _is_array(value) -> bool:
    return isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim >= 1


def _data_reason(x, y, what="x") -> str | None:
    if not _is_array(x):
        return f"{what} is a {type(x).__name__}, not one array or tensor"
    if y is not None and not _is_array(y):
        return f"the targets are a {type(y).__name__}, not one array or tensor"
    if y is not None and len(y) != len(x):
        return "x and y have different numbers of samples (Keras says which)"
    if len(x) == 0:
        return "x is empty (Keras says so)"
    if not (_finite(x) and (y is None or _finite(y))):
        return f"{what} or its targets hold NaN or Inf, which Keras trains on as given"
    return None


def _finite(value) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype.kind not in "fc" or bool(np.isfinite(value).all())
    return not (value.is_floating_point() or value.is_complex()) or bool(torch.isfinite(value).all())


def _model_reason(model) -> str | None:
    if not getattr(model, "compiled", False) or getattr(model, "_compile_loss", None) is None:
        return "the model is not compiled with a loss (Keras says so)"
    overridden = _overridden(model, _STEP_METHODS)
    if overridden:
        return f"the model defines its own {', '.join(overridden)}"
    config = getattr(model, "_hpctrain_compile", None)
    if config is None:
        return "the model was compiled before hpctrain's seam was installed"
    if isinstance(config["loss"], (dict, list, tuple)) or config["loss_weights"] is not None:
        return "the loss is given per output"
    if isinstance(config["loss"], str) and config["loss"].lower() in ("crossentropy", "ce"):
        return f"Keras picks the cross-entropy that loss={config['loss']!r} means from the targets' shapes"
    if config["weighted_metrics"]:
        return "weighted_metrics are computed by Keras"
    if isinstance(config["metrics"], dict) or any(isinstance(m, (list, tuple, dict)) for m in config["metrics"] or []):
        return "the metrics are given per output"
    if len(getattr(model, "outputs", None) or [None]) > 1 or len(getattr(model, "inputs", None) or [None]) > 1:
        return "the model has several inputs or outputs"
    if isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):
        return "a loss-scale optimizer runs in Keras's loop"
    if model.dtype_policy.name != "float32":
        return f"the {model.dtype_policy.name} dtype policy runs in Keras's loop"
    return None  # a pipeline strategy takes the model's chain of layers, or refuses it (keras.pipeline_layers)


def _training_reason(model, callbacks) -> str | None:
    if model.built and not model.trainable_variables:
        return "the model has no trainable weights"
    if any(isinstance(c, keras.callbacks.TerminateOnNaN) for c in callbacks or []):
        return "a TerminateOnNaN callback reads each batch's loss as Keras's loop gives it"
    return None


def why_keras_fits(model, x, y, validation_data, callbacks=None) -> str | None:
    reason = _model_reason(model) or _data_reason(x, y) or _training_reason(model, callbacks)
    if reason is None and y is None:
        reason = "fit was given no targets"
    if reason is None and validation_data is not None:
        if not isinstance(validation_data, (list, tuple)) or len(validation_data) not in (2, 3):
            reason = "validation_data is not (x, y) or (x, y, sample_weight)"
        else:
            reason = _data_reason(validation_data[0], validation_data[1], "validation x")
    return reason


def why_keras_trains_built(model) -> str | None:
    """What only shows once the model is built (a model without an input shape builds in ``fit``)."""
    return "the model has no trainable weights" if not model.trainable_variables else None


def why_keras_evaluates(model, x, y, steps, extra) -> str | None:
    if steps is not None or extra:
        return "steps or other arguments are given"
    return _model_reason(model) or _data_reason(x, y) or ("evaluate was given no targets" if y is None else None)


def why_keras_predicts(model, x, steps, callbacks=None) -> str | None:
    if steps is not None:
        return "steps is given"
    if watches(callbacks, "on_predict_batch_begin", "on_predict_batch_end"):
        return "a callback watches each predict batch, which the engine does not call"
    if _overridden(model, ("predict_step",)):
        return "the model defines its own predict_step"
    if len(getattr(model, "outputs", None) or [None]) > 1 or len(getattr(model, "inputs", None) or [None]) > 1:
        return "the model has several inputs or outputs"
    if model.dtype_policy.name != "float32":
        return f"the {model.dtype_policy.name} dtype policy runs in Keras's loop"
    return _data_reason(x, None)


def announce(model, method: str, verbose, reason: str, options: dict) -> None:
    """One line, once per model and reason, saying that Keras's own loop runs and why."""
    if options:
        raise TypeError(f"{', '.join(sorted(options))} apply to hpctrain's engine, but this {method} runs on "
                        f"Keras's own loop because {reason}; remove them.")
    said = model.__dict__.setdefault("_hpctrain_said", set())
    if verbose in (0, False) or reason in said or reason == "the engine is off":
        return
    said.add(reason)
    print(f"hpctrain: {method} runs on Keras's own loop: {reason}.")
