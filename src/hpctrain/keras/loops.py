"""``fit``/``evaluate`` on the engine for data Keras reads batch by batch, and for models with their
own step functions (both read through Keras's epoch iterator, see :mod:`hpctrain.keras.batch_data`).

A model the engine's own step can train runs with the session's trainer (the engine's loss,
metrics and optimizer, on its loader path); any other (its own ``train_step``, ``test_step``,
``compute_loss`` or ``compute_metrics``, several inputs or outputs, per-output losses, ...) with
:class:`~hpctrain.keras.user_steps.KerasStepTrainer`, which runs Keras's own steps in the engine's loop.
"""

from __future__ import annotations

import os

import keras
from keras.src.trainers.data_adapters import array_slicing

from hpctrain.keras import batch_data, metric_state, optimizer_map, routing, user_steps
from hpctrain.keras.callback_bridge import RateReader, StateWriter, UserVerbose, adapt_callbacks
from hpctrain.keras.session import session_of


def keras_steps(model) -> bool:
    return routing.steps_reason(model) is not None


def _trainer(model, plan=None):
    session = session_of(model)
    if keras_steps(model):
        if plan is not None:
            session.step_trainer = user_steps.KerasStepTrainer(model, plan)
        trainer = user_steps.trainer_of(session)
    else:
        trainer = session._trainer_for(None, plan)
    if plan is None and trainer.plan.tune_threads:  # a count neither given nor measured on this model yet
        _threads_as_the_process_has(trainer)
    return trainer


def _threads_as_the_process_has(trainer) -> None:
    """The engine measures thread counts on resident arrays; batches read one by one through Keras's
    iterator cannot be measured on, so they train with the count the process was given
    (``OMP_NUM_THREADS``), as Keras's own loop would. Small operations (an LSTM's steps) on more
    threads than asked for wait on each other: measured 17x the CPU time on a loaded machine."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0 and int(given) != trainer.plan.threads:
        trainer.plan = trainer.plan.with_choice("threads", int(given), "OMP_NUM_THREADS; batches read by Keras's "
                                                "iterator leave no resident data to measure other counts on")


def _how(model) -> str:
    if keras_steps(model):
        return f"{user_steps.REASON} ({routing.steps_reason(model)})"
    return "batches read by Keras's epoch iterator, on the engine's loader path"


def _split_for_validation(arguments: dict) -> None:
    """Keras's ``validation_split``: the last rows of the arrays, before any shuffle."""
    if arguments["validation_split"] and arguments["validation_data"] is None:
        (x, y, weights), validation = array_slicing.train_validation_split(
            (arguments["x"], arguments["y"], arguments["sample_weight"]),
            validation_split=arguments["validation_split"])
        arguments.update(x=x, y=y, sample_weight=weights, validation_data=validation)
    arguments["validation_split"] = 0.0


def fit(model, arguments: dict, *, plan=None, on_nonfinite="raise", checkpoint=None):
    _refuse_options(model, on_nonfinite, checkpoint)
    _split_for_validation(arguments)
    iterator = batch_data.epoch_iterator(model, arguments["x"], arguments["y"], arguments["sample_weight"],
                                       arguments["batch_size"], arguments["steps_per_epoch"], arguments["shuffle"],
                                       arguments["class_weight"])
    trainer = _trainer(model, plan)
    batch = batch_data.parcels(trainer.plan.device) if keras_steps(model) else batch_data.unpacked
    train, validation = batch_data.loader(iterator, batch), batch_data.validation_loader(model, arguments, batch)
    routing.announce_engine(model, "fit", arguments["verbose"], _how(model))
    history = keras.callbacks.History()
    engine_optimizer = trainer.optimizer if isinstance(trainer.optimizer, optimizer_map.LazyOptimizer) else None
    callbacks = [UserVerbose(arguments["verbose"]), StateWriter(model, engine_optimizer),
                 *adapt_callbacks(arguments["callbacks"]), history,
                 RateReader(model, engine_optimizer, 0)]
    model.stop_training = False
    if engine_optimizer is not None:
        optimizer_map.set_rate(model.optimizer, engine_optimizer)
    try:
        engine_history = trainer.fit(
            train, None, epochs=arguments["epochs"], verbose=arguments["verbose"], callbacks=callbacks,
            validation_data=validation, shuffle=False, initial_epoch=arguments["initial_epoch"],
            callback_model=model, validation_freq=arguments["validation_freq"], checkpoint=checkpoint,
            on_nonfinite=on_nonfinite)
    finally:
        if engine_optimizer is not None:
            optimizer_map.write_back(model.optimizer, engine_optimizer)
    history.history, history.epoch = engine_history.history, engine_history.epoch
    model.history = history
    if keras_steps(model):
        if arguments["epochs"] > 0 and isinstance(model.optimizer, keras.optimizers.Optimizer):
            model.optimizer.finalize_variable_values(model.trainable_weights)  # as Keras's fit ends
    else:
        _leave_last_pass_in_metrics(model, history.history, train, validation)
    return history


def _refuse_options(model, on_nonfinite, checkpoint) -> None:
    if checkpoint is not None:
        raise TypeError("checkpoint= resumes mid-epoch, which needs arrays: this fit reads its data through Keras's "
                        "epoch iterator, which cannot be replayed to the middle of an epoch. Remove checkpoint=, or "
                        "use keras.callbacks.BackupAndRestore(save_freq='epoch').")
    if on_nonfinite != "raise" and keras_steps(model):
        raise TypeError(f"on_nonfinite={on_nonfinite!r} skips the engine's update, but this model's fit runs Keras's "
                        f"own steps ({routing.steps_reason(model)}), which update inside the step; remove it.")


def _leave_last_pass_in_metrics(model, history: dict, train, validation) -> None:
    last = {name: values[-1] for name, values in history.items() if values}
    if "val_loss" in last:
        metric_state.write_results(model, last, batch_data.rows_of(validation), prefix="val_")
    else:
        metric_state.write_results(model, last, batch_data.rows_of(train))


def evaluate(model, arguments: dict):
    iterator = batch_data.epoch_iterator(model, arguments["x"], arguments["y"], arguments["sample_weight"],
                                       arguments["batch_size"], arguments["steps"])
    trainer = _trainer(model)
    data = batch_data.loader(iterator, batch_data.parcels(trainer.plan.device) if keras_steps(model)
                             else batch_data.unpacked)
    logs = trainer.evaluate(data, None, verbose=arguments["verbose"], return_dict=True,
                            callbacks=adapt_callbacks(arguments["callbacks"]), callback_model=model)
    if not keras_steps(model):
        metric_state.write_results(model, logs, batch_data.rows_of(data))
    if arguments["return_dict"]:
        return logs
    return model._flatten_metrics_in_order(logs)
