"""One Keras model's training on the engine: its ``Trainer``, and Keras's state kept exact.

Built on the first ``fit``/``evaluate``/``predict`` after ``compile`` and kept until the next
``compile``. Weights are Keras's own Parameters, updated in place by the engine; the optimizer's
count and moments are written back into Keras's variables at each epoch's end (before user
callbacks, so a ``ModelCheckpoint`` saves them) and after ``fit``; a learning rate changed by a
callback is read at each epoch's start.
"""

from __future__ import annotations

import keras
import numpy as np
import torch

from hpctrain.engine import Trainer
from hpctrain.engine.callbacks import register_callback_base
from hpctrain.engine.trainer import INFERENCE_BATCH
from hpctrain.hardware import make_plan
from hpctrain.keras import metric_state, optimizer_map, shuffle_order, translate
from hpctrain.keras.callback_bridge import RateReader, StateWriter, UserVerbose, adapt_callbacks, watches
from hpctrain.keras.module import KerasModule
from hpctrain.keras.native_forward import native_forward
from hpctrain.keras.progress_bridge import ProgressBars
from hpctrain.keras.replicas import gather_shards

register_callback_base(keras.callbacks.Callback)

_ACTIVATIONS = {"softmax": lambda z: torch.softmax(z, dim=-1), "sigmoid": torch.sigmoid}


def session_of(model) -> "KerasSession":
    session = model.__dict__.get("_hpctrain_session")
    if session is None:
        session = model.__dict__["_hpctrain_session"] = KerasSession(model)  # untracked by Keras
    return session


class KerasSession:
    def __init__(self, model):
        self.model = model
        self.trainer: Trainer | None = None
        self._plan_given = None
        self.replica = False  # a spawned data-parallel replica (see keras.replicas)

    # ---- the engine's parts -------------------------------------------------------------------

    def _trainer_for(self, x, plan=None) -> Trainer:
        model = self.model
        _build(model, x)
        if self.trainer is not None and plan is None:
            return self.trainer
        config = model._hpctrain_compile
        loss = translate.engine_loss(config["loss"])
        fold = translate.foldable_output_activation(model, loss)
        if (translate.static_layers(model, fold_last_activation=bool(fold)) is None
                and not (KerasModule.uses_native_forward and native_forward(model, logits=bool(fold)))):
            # Autograd runs Keras's forward; Keras's own loss object then keeps its exact rounding.
            loss, fold = None, None
        if loss is None:
            loss = translate.KerasLoss(config["loss"])
        elif fold:
            loss = loss.with_logits()
        plan = plan or self._plan_given or self._strategy_plan() or make_plan()
        self._plan_given = plan
        reason = optimizer_map.why_not_mapped(model.optimizer, model.trainable_variables)
        if config["run_eagerly"]:
            plan = plan.with_choice("executor", "autograd", "run_eagerly=True in compile")
        elif reason is not None:
            plan = plan.with_choice("executor", "autograd", reason)
        # jit_compile=True is not a demand here: torch.compile costs seconds to tens of seconds (and
        # Keras on JAX saves its "auto" as True in every .keras file); the plan compiles where it
        # measures that it pays. make_plan(compile=True) forces it.
        module = KerasModule(model, logits=bool(fold))
        self.trainer = Trainer(module, loss=loss, optimizer=self._optimizer_factory(), statistics=module.statistics(),
                               metrics=_metrics_for(model, config, loss),
                               output_activation=_ACTIVATIONS.get(fold), penalty=_penalty(model), plan=plan,
                               inference_batch_size=INFERENCE_BATCH)
        self.trainer.stop_source = model
        return self.trainer

    def _optimizer_factory(self):
        model = self.model

        def build(_params, device):
            variables = model.trainable_variables
            if optimizer_map.why_not_mapped(model.optimizer, variables) is not None:
                return optimizer_map.KerasApply(model.optimizer, variables)
            engine = optimizer_map.engine_optimizer(model.optimizer, [v.value for v in variables], device)
            optimizer_map.load_into_engine(model.optimizer, engine, variables)
            return engine

        return build

    def use_plan(self, plan) -> None:
        """Train with ``plan`` from now on (a spawned replica's, with its rank and communicator)."""
        self._plan_given, self.trainer = plan, None

    def _strategy_plan(self):
        strategy = getattr(self.model, "_hpctrain_strategy", None)
        return None if strategy is None or strategy.spawns_locally else strategy.plan()

    @property
    def plan(self):
        return self.trainer.plan if self.trainer is not None else (self._plan_given or make_plan())

    # ---- the three calls ----------------------------------------------------------------------

    def fit(self, arguments: dict, *, plan=None, on_nonfinite="raise", checkpoint=None, keras_builds_first=False):
        """``keras_builds_first``: Keras's ``fit`` would draw a first batch to build with (asked before the seam built)."""
        model = self.model
        x, y = _features(model, arguments.pop("x")), arguments.pop("y")
        build_for_training(model, x, y)
        if getattr(getattr(model, "_hpctrain_strategy", None), "pipelined", False):
            return self._fit_pipelined(x, y, arguments)
        trainer = self._trainer_for(x, plan)
        strategy = getattr(model, "_hpctrain_strategy", None)
        if strategy is not None and plan is None:  # measured once: do more local processes pay for this model?
            decision = strategy.choose_replicas(trainer.module, x, 32 if arguments["batch_size"] is None
                                                else arguments["batch_size"])
            if decision is not None and not strategy.spawns_locally:
                trainer.plan = trainer.plan.with_data_parallel(decision)
        validation = arguments.pop("validation_data")
        if validation is not None:
            validation = (_features(model, validation[0]), *validation[1:])
        history = keras.callbacks.History()
        engine_optimizer = trainer.optimizer if isinstance(trainer.optimizer, optimizer_map.LazyOptimizer) else None
        given = arguments.pop("callbacks")
        bars = ProgressBars(given, arguments["verbose"], rank=trainer.plan.rank)
        batch_size = arguments.pop("batch_size")
        # Keras's order for shuffled epochs, and torch's RNG left as Keras's fit leaves it. A spawned
        # replica's draws for the build were made by the process that spawned it.
        # batch_size="auto" is hpctrain's own (Keras has no order for it): the engine's shuffle then.
        keras_draws = [] if batch_size == "auto" else [shuffle_order.keras_draws(
            trainer, arguments, rows=len(x), validation=validation, batch_size=32 if batch_size is None else batch_size,
            builds_first=keras_builds_first and not self.replica)]
        callbacks = [UserVerbose(arguments["verbose"]), StateWriter(model, engine_optimizer), *keras_draws,
                     *adapt_callbacks(given), history,
                     *bars.callbacks, RateReader(model, engine_optimizer, arguments["verbose"])]
        model.stop_training = False
        if engine_optimizer is not None:  # Keras's rate, before the plan rescales it for its batch size
            optimizer_map.set_rate(model.optimizer, engine_optimizer)
        strategy = getattr(model, "_hpctrain_strategy", None)
        if strategy is not None and strategy.spawns_locally:
            return self._fit_in_replicas(strategy, dict(x=x, y=y, batch_size=batch_size, validation_data=validation,
                                                        callbacks=given, **arguments),
                                         plan=plan, on_nonfinite=on_nonfinite, checkpoint=checkpoint)
        try:
            with bars.feeding():  # Keras's ProgbarLogger prints; the engine prints nothing of its own
                engine_history = trainer.fit(x, y, batch_size=32 if batch_size is None else batch_size,
                                             validation_data=validation, callbacks=callbacks, callback_model=model,
                                             checkpoint=checkpoint, on_nonfinite=on_nonfinite,
                                             **{**arguments, "verbose": 0})
        finally:
            if engine_optimizer is not None:
                optimizer_map.write_back(model.optimizer, engine_optimizer)
        gather_shards(model, trainer)  # a sharded fit's whole weights into the variables
        history.history, history.epoch = engine_history.history, engine_history.epoch  # a resumed run's too
        model.history = history
        _leave_last_pass_in_metrics(model, history.history, len(x), validation, arguments["validation_split"])
        return history

    def _fit_in_replicas(self, strategy, arguments: dict, **options):
        """One process per device, each fitting a copy of the model on its share of every batch."""
        from hpctrain.distribute.spawn import fit_in_replicas
        from hpctrain.keras.replicas import KerasReplicas

        if any(value is not None and value != "raise" for value in options.values()):
            raise TypeError("plan, checkpoint and on_nonfinite are set per replica by the strategy; remove them.")
        pipelined = getattr(strategy, "pipelined", False)  # each process then trains a stage, not a replica
        engine_history = fit_in_replicas(self.model, strategy.devices, strategy.timeout_seconds, arguments,
                                         front=KerasReplicas(), sharding=getattr(strategy, "sharding", None),
                                         strategy=strategy if pipelined else None)
        history = keras.callbacks.History()
        history.set_model(self.model)
        history.set_params(engine_history.params)
        history.history, history.epoch = engine_history.history, engine_history.epoch
        self.model.history = history
        return history

    def _fit_pipelined(self, x, y, arguments: dict):
        """This launched process's stage trains; its trainer then runs evaluate and predict too. From a
        plain start, one process per stage is spawned and the whole trained model comes back."""
        from hpctrain.keras.pipeline_layers import check_pipelinable, fit_stage

        validation = arguments.pop("validation_data")
        if validation is not None:
            validation = (_features(self.model, validation[0]), *validation[1:])
        given = arguments.pop("callbacks")
        strategy = self.model._hpctrain_strategy
        if strategy.spawns_locally:
            check_pipelinable(self.model, strategy, arguments)  # here, before any process starts
            return self._fit_in_replicas(strategy, dict(x=x, y=y, validation_data=validation, callbacks=given,
                                                        **arguments))
        self.trainer, engine_history = fit_stage(self.model, self.model._hpctrain_strategy, x, y,
                                                 dict(arguments, validation_data=validation), given)
        history = keras.callbacks.History()
        history.set_model(self.model)
        history.history, history.epoch = engine_history.history, engine_history.epoch
        self.model.history = history
        return history

    def evaluate(self, arguments: dict):
        model = self.model
        x = _features(model, arguments["x"])
        build_for_training(model, x, arguments["y"])
        trainer = self._trainer_for(x)
        bars = ProgressBars(arguments["callbacks"], arguments["verbose"], rank=trainer.plan.rank)
        with bars.feeding():
            logs = trainer.evaluate(x, arguments["y"], batch_size=_batch_size(arguments, "on_test_batch"),
                                    verbose=0, return_dict=True, sample_weight=arguments["sample_weight"],
                                    callbacks=[*_user_callbacks(arguments), *bars.callbacks],
                                    callback_model=model)
        metric_state.write_results(model, logs, len(x))
        if arguments["return_dict"]:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def predict(self, arguments: dict) -> np.ndarray:
        model = self.model
        x = _features(model, arguments["x"])
        if getattr(model, "_hpctrain_compile", None) is None or not getattr(model, "compiled", False):
            trainer = _inference_trainer(model, x)
        else:
            trainer = self._trainer_for(x)
        bars = ProgressBars(arguments["callbacks"], arguments["verbose"], rank=trainer.plan.rank)
        with bars.feeding():
            return trainer.predict(x, batch_size=arguments["batch_size"], verbose=0,
                                   callbacks=[*_user_callbacks(arguments), *bars.callbacks],
                                   callback_model=model)


def _user_callbacks(arguments: dict) -> list:
    """The user's callbacks as the engine calls them, told the verbose of the call."""
    return [UserVerbose(arguments["verbose"]), *adapt_callbacks(arguments["callbacks"])]


def _batch_size(arguments: dict, hooks: str):
    """The batch size given; where none is, the engine's inference batch, unless a callback watches
    each batch: it then sees Keras's batches of 32."""
    batch_size = arguments["batch_size"]
    if batch_size is None and watches(arguments["callbacks"], hooks + "_begin", hooks + "_end"):
        return 32
    return batch_size


def _metrics_for(model, config, loss) -> list:
    """The static path's metrics by the engine's names; on the autograd path, where Keras's own
    loss runs, the metric objects Keras's compile resolved ("accuracy" as Keras reads it for this
    loss and output), each pass with a fresh copy."""
    compiled = getattr(model, "_compile_metrics", None)
    if isinstance(loss, translate.KerasLoss) and compiled is not None and compiled.built:
        return [translate.KerasMetric(metric) for metric in compiled.metrics]
    return translate.engine_metrics(config["metrics"])


def _leave_last_pass_in_metrics(model, history: dict, rows: int, validation, validation_split) -> None:
    """Keras's metric objects after fit hold the last pass: validation where it ran, else training."""
    last = {name: values[-1] for name, values in history.items() if values}
    if "val_loss" in last:
        validation_rows = len(validation[0]) if validation is not None else int(rows * validation_split)
        metric_state.write_results(model, last, validation_rows, prefix="val_")
    else:
        metric_state.write_results(model, last, rows - int(rows * (validation_split or 0.0)))


def _inference_trainer(model, x) -> Trainer:
    _build(model, x)
    return Trainer(KerasModule(model), loss="mse", optimizer=lambda params, device: None,
                   inference_batch_size=INFERENCE_BATCH)


def _penalty(model):
    """Keras's own regularization (and ``add_loss``) terms for the autograd path; the static
    executor reads L1/L2 from its layers instead."""

    zero = torch.zeros((), device=_device_of(model))  # made once, not per step

    def penalty():
        terms = model.losses
        return sum(terms[1:], terms[0]) if terms else zero

    penalty.described_by_static_layers = True  # where static layers exist, they carry L1/L2
    return penalty


def _device_of(model) -> torch.device:
    return next((v.value.device for v in model.variables), torch.device("cpu"))


def _features(model, x):
    """Inputs as Keras's float32 layers take them: floats and integers cast to float32 once (ids
    for an Embedding stay integers)."""
    if isinstance(x, np.ndarray) and x.dtype != np.float32:
        if x.dtype.kind in "biu" and KerasModule(model).takes_ids():
            return x
        return x.astype(np.float32)
    if isinstance(x, torch.Tensor) and x.dtype != torch.float32 and (x.is_floating_point() or not KerasModule(
            model).takes_ids()):
        return x.to(torch.float32)
    return x


def build_for_training(model, x, y) -> None:
    """The model, its compiled loss and metrics built as Keras's ``fit``/``evaluate`` build them: by
    a symbolic call on the first rows (no layer runs, so none counts a call), after which
    ``model.metrics`` holds the compiled metrics that callbacks look up (``EarlyStopping``'s
    ``mode="auto"`` reads their direction)."""
    rows, targets = _features(model, x[:2]), y[:2]
    try:
        model._symbolic_build(data_batch=(rows, targets))
    except ValueError:
        # Integer class labels with categorical_crossentropy: Keras's loss refuses them, the
        # engine reads them as class indices (with one warning); the build sees them one-hot.
        labels = np.asarray(targets)
        if labels.dtype.kind not in "iu" or not (labels.ndim == 1 or labels.ndim == 2 and labels.shape[1] == 1):
            raise
        classes = KerasModule(model).output_shape_of(rows)[-1]
        one_hot = np.eye(classes, dtype="float32")[labels.reshape(-1).astype(int) % classes]
        model._symbolic_build(data_batch=(rows, one_hot))


def _build(model, x) -> None:
    """A model without an input shape builds on its first call, as Keras's fit would build it."""
    if model.built and all(layer.built for layer in model.layers):
        return
    sample = torch.as_tensor(np.asarray(x[:2]) if not isinstance(x, torch.Tensor) else x[:2])
    with torch.no_grad():
        model(sample, training=False)
