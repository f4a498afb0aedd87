"""Which Keras calls the engine runs, and why the others run on Keras's own loop.

Each ``why_…`` returns ``None`` when the engine runs the call exactly as Keras would, else the
reason in words; the seam then calls Keras's own method, and ``verbose`` says so once per model.
"""

from __future__ import annotations

import keras
import numpy as np
import torch

from hpctrain.keras.batch_data import holds_batches
from hpctrain.keras.callback_bridge import watches
from hpctrain.keras.optimizer_map import why_not_mapped  # noqa: F401  (explained by the plan)

_STEP_METHODS = ("train_step", "test_step", "predict_step", "compute_loss", "compute_metrics")


def _overridden(model, names) -> list[str]:
    return [name for name in names if getattr(type(model), name) is not getattr(keras.Model, name)]


def overridden_steps(model) -> list[str]:
    """The step functions the model defines itself (its fit and evaluate then run them)."""
    return _overridden(model, _STEP_METHODS[:2] + _STEP_METHODS[3:])


def reads_batches(model, x, validation_data=None) -> bool:
    """Whether the call reads its data through Keras's epoch iterator (:mod:`hpctrain.keras.loops`):
    data that is not arrays, or a model whose fit runs Keras's own steps (:func:`steps_reason`)."""
    return holds_batches(x) or holds_batches(validation_data) or steps_reason(model) is not None


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
    """Why Keras's own loop runs the model's ``fit``/``evaluate``, or ``None``."""
    keras_steps = steps_reason(model)
    if not getattr(model, "compiled", False):
        return "the model is not compiled (Keras says so)"
    if getattr(model, "_compile_loss", None) is None and not overridden_steps(model):
        return "the model is not compiled with a loss (Keras says so)"
    if keras_steps is None and getattr(model, "_hpctrain_compile", None) is None:
        return "the model was compiled before hpctrain's seam was installed"
    strategy = getattr(model, "_hpctrain_strategy", None)
    if keras_steps is not None and strategy is not None:
        return f"under a strategy, a model whose fit runs Keras's own steps ({keras_steps}) trains on Keras's loop"
    return None


def steps_reason(model) -> str | None:
    """Why the model's ``fit``/``evaluate`` run Keras's own step functions in the engine's loop
    (:mod:`hpctrain.keras.user_steps`) instead of the engine's step, or ``None``."""
    own = overridden_steps(model)
    if own:
        return f"the model defines its own {', '.join(own)}"
    if len(getattr(model, "outputs", None) or [None]) > 1 or len(getattr(model, "inputs", None) or [None]) > 1:
        return "the model has several inputs or outputs"
    config = getattr(model, "_hpctrain_compile", None)
    if config is None:
        return None
    if isinstance(config["loss"], (dict, list, tuple)) or config["loss_weights"] is not None:
        return "the loss is given per output"
    if isinstance(config["loss"], str) and config["loss"].lower() in ("crossentropy", "ce"):
        return f"Keras picks the cross-entropy that loss={config['loss']!r} means from the targets' shapes"
    if config["weighted_metrics"]:
        return "weighted_metrics are computed by Keras's step"
    if isinstance(config["metrics"], dict) or any(isinstance(m, (list, tuple, dict)) for m in config["metrics"] or []):
        return "the metrics are given per output"
    if isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):
        return "a loss-scale optimizer scales the loss in Keras's step"
    if model.dtype_policy.name != "float32":
        return f"the {model.dtype_policy.name} dtype policy runs in Keras's step"
    return None


def _batches_reason(model, x, y, validation_split) -> str | None:
    """Data read batch by batch: Keras's own checks where it refuses the arguments."""
    if y is not None:
        return f"y is given beside a {type(x).__name__}, which holds the targets (Keras says so)"
    if validation_split:
        return f"validation_split needs arrays, not a {type(x).__name__} (Keras says so)"
    if getattr(model, "_hpctrain_strategy", None) is not None:
        return "a strategy's replicas take arrays"
    return None


def _training_reason(model, callbacks) -> str | None:
    if model.built and not model.trainable_variables:
        return "the model has no trainable weights"
    if any(isinstance(c, keras.callbacks.TerminateOnNaN) for c in callbacks or []):
        return "a TerminateOnNaN callback reads each batch's loss as Keras's loop gives it"
    return None


def why_keras_fits(model, x, y, validation_data, callbacks=None, validation_split=0.0) -> str | None:
    reason = _model_reason(model) or _training_reason(model, callbacks)
    if reason is None and holds_batches(x):
        return _batches_reason(model, x, y, validation_split)
    if reason is None and steps_reason(model) is not None:
        return None  # Keras's own iterator reads the data, of any structure, and checks it as Keras does
    reason = reason or _data_reason(x, y)
    if reason is None and y is None:
        reason = "fit was given no targets"
    if reason is None and holds_batches(validation_data):
        return None
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
    if extra:
        return "arguments other than Keras's are given"
    if holds_batches(x):
        return _model_reason(model) or _batches_reason(model, x, y, 0.0)
    if steps_reason(model) is not None:
        return _model_reason(model)
    if steps is not None:
        return "steps is given with arrays"
    return _model_reason(model) or _data_reason(x, y) or ("evaluate was given no targets" if y is None else None)


def why_keras_trains_on_batch(model, x, y, sample_weight, class_weight) -> str | None:
    if steps_reason(model) is not None:
        return f"{steps_reason(model)}: Keras's train_on_batch runs its step"
    if sample_weight is not None and class_weight is not None:
        return "sample_weight and class_weight are both given (Keras says so)"
    if getattr(model, "_hpctrain_strategy", None) is not None:
        return "a model under a strategy trains on one batch in Keras's loop"
    reason = _model_reason(model) or _data_reason(x, y) or _training_reason(model, None)
    if reason is None and y is None:
        return "train_on_batch was given no targets"
    if reason is None:
        from hpctrain.keras.session import build_for_training

        build_for_training(model, x, y)
        reason = why_keras_trains_built(model)
    return reason


def why_keras_tests_on_batch(model, x, y) -> str | None:
    if steps_reason(model) is not None:
        return f"{steps_reason(model)}: Keras's test_on_batch runs its step"
    return why_keras_evaluates(model, x, y, None, {})


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


def announce_engine(model, method: str, verbose, how: str) -> None:
    """One line, once per model and way, saying that the engine runs the call and how."""
    said = model.__dict__.setdefault("_hpctrain_said", set())
    line = f"hpctrain: {method} runs on the engine: {how}"
    if verbose not in (0, False) and line not in said:
        said.add(line)
        print(line)


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
