"""The general path: a Keras model's own ``train_step``/``test_step`` inside the engine's loop.

A model that defines its own ``train_step``, ``test_step``, ``compute_loss`` or
``compute_metrics`` trains here: each batch goes to the model's ``train_step`` (Keras's, where
only ``compute_loss``/``compute_metrics`` are the model's own), which computes its loss, updates
with ``self.optimizer.apply`` and returns its logs. The engine's loop runs around it: callbacks,
progress, ``stop_training``, validation, History. The logs are what the step returns, read as
Keras's ``fit`` reads them (the model's metrics where the step returns their names).
"""

from __future__ import annotations

import torch
from keras.src.utils.python_utils import pythonify_logs

from hpctrain.engine import Trainer
from hpctrain.engine import losses as engine_losses
from hpctrain.engine.callbacks import CallbackList
from hpctrain.engine.data import split_weights
from hpctrain.engine.trainer import INFERENCE_BATCH
from hpctrain.keras.batch_data import Parcel
from hpctrain.keras.module import KerasModule
from hpctrain.keras.optimizer_map import KerasApply

REASON = "Keras's own step functions in the engine's loop"


class KerasStepLogs:
    """The logs of one pass (train or test): what the model's step returned last, read through
    the model's own metric objects as Keras's loop reads them. Takes the place of the engine's
    metric set for this trainer."""

    def __init__(self, model, prefix: str = ""):
        self.model, self.prefix, self.logs = model, prefix, {}

    def reset(self) -> None:
        self.model.reset_metrics()
        self.logs = {}

    def record(self, logs) -> None:
        self.logs = logs

    def results(self, across_replicas: bool = True) -> dict:
        logs = pythonify_logs(self.model._get_metrics_result_or_logs(self.logs))
        return {self.prefix + name: value for name, value in logs.items()}

    def local_results(self) -> dict:
        return self.results()


class KerasTrainStep:
    """One engine step: the batch handed to the model's ``train_step`` as Keras hands it."""

    name = "keras"

    def __init__(self, model):
        self.model = model

    def __call__(self, x, y, metrics: KerasStepLogs, batch_rows=None) -> None:
        metrics.record(self.model.train_step(keras_batch(x, y)))


def keras_batch(x, y):
    """The batch as Keras's iterator made it (carried by a parcel), else ``(x, y)`` or
    ``(x, y, sample_weight)``."""
    if isinstance(x, Parcel):
        return x.batch
    targets, weights = split_weights(y)
    return (x, targets) if weights is None else (x, targets, weights)


class _NoLoss(engine_losses.Loss):
    """The engine's loss slot: the model's step computes its own."""

    name = "loss"

    def __call__(self, prediction, target):
        raise RuntimeError("the model's own train_step computes the loss")


class KerasStepTrainer(Trainer):
    """The engine's ``Trainer`` whose step is the Keras model's own (see the module's docstring)."""

    def __init__(self, model, plan):
        self.keras_model = model
        plan = plan.with_choice("executor", "autograd", REASON)
        super().__init__(KerasModule(model), loss=_NoLoss(), plan=plan, inference_batch_size=INFERENCE_BATCH,
                         optimizer=lambda _params, _device: KerasApply(model.optimizer, model.trainable_variables))

    def _make_step(self, data, batch_size: int, hooks: CallbackList):
        self.plan = self.plan.with_choice("executor", "autograd", REASON)
        return KerasTrainStep(self.keras_model), self._metric_set(data.output_shape)

    def _loader_output_shape(self, loader) -> tuple:
        return ()  # the model's own steps read its outputs; the engine's metrics, which would, are not used

    def _metric_set(self, output_shape, prefix: str = "") -> KerasStepLogs:
        return KerasStepLogs(self.keras_model, prefix)

    def _evaluate_logs(self, data, batch_size: int, prefix: str = "", output_shape=None, batches=None,
                       hooks: CallbackList | None = None) -> dict:
        """A pass of the model's ``test_step`` over ``data``, as Keras's ``evaluate`` runs it."""
        hooks = hooks or CallbackList([], model=self.keras_model, params={})
        per_batch = hooks.wants("on_test_batch_begin", "on_test_batch_end")
        logs = KerasStepLogs(self.keras_model)
        hooks.call("on_test_begin", {})
        self.module.eval()
        logs.reset()
        with torch.no_grad():
            for batch, (xb, yb) in enumerate(data.batches() if batches is None else batches):
                if per_batch:
                    hooks.call("on_test_batch_begin", batch, {})
                logs.record(self.keras_model.test_step(keras_batch(xb, yb)))
                if per_batch:
                    hooks.call("on_test_batch_end", batch, logs.results())
        results = logs.results()
        hooks.call("on_test_end", results)
        return {prefix + name: value for name, value in results.items()}


def trainer_of(session) -> KerasStepTrainer:
    """The session's general-path trainer, made once per ``compile``."""
    trainer = getattr(session, "step_trainer", None)
    if trainer is None:
        from hpctrain.hardware import make_plan

        trainer = session.step_trainer = KerasStepTrainer(session.model, session._plan_given or make_plan())
    return trainer
