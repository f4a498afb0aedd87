"""The seam: Keras's ``compile``/``fit``/``evaluate``/``predict`` (and ``*_on_batch``) handed to the
hpctrain engine.

Installed once on ``keras.Model`` when :mod:`hpctrain.keras` is imported, so every Keras model
(Sequential, functional, subclassed, loaded from a file) trains on the engine, including models
made by a program that imports ``keras`` itself after hpctrain. Where the engine cannot run a
model or an argument exactly as Keras would (several outputs, ``weighted_metrics``, a user
``predict_step``), the call goes to Keras's own method unchanged, and ``verbose`` says why.

``use_engine(False)`` (or ``HPCTRAIN_KERAS_ENGINE=0`` in the environment of a program) turns
the seam off: Keras's own methods run everywhere.
"""

from __future__ import annotations

import functools
import os

import keras

from hpctrain.keras import call_output, routing

_KERAS_METHODS: dict[str, object] = {}
_switch = {"on": os.environ.get("HPCTRAIN_KERAS_ENGINE", "1") != "0"}
HPCTRAIN_FIT_OPTIONS = ("plan", "on_nonfinite", "checkpoint")


def use_engine(enabled: bool = True) -> None:
    """Train Keras models on hpctrain's engine (the default), or on Keras's own loop."""
    _switch["on"] = bool(enabled)


def engine_enabled() -> bool:
    return _switch["on"]


def keras_method(name: str):
    """Keras's own ``keras.Model`` method, as it was before the seam."""
    return _KERAS_METHODS[name]


def install() -> None:
    if _KERAS_METHODS:
        return
    from hpctrain.engine.callbacks import register_callback_base

    # Keras's callbacks are callbacks to the native API's Trainer too, from the moment Keras is in.
    register_callback_base(keras.callbacks.Callback)
    call_output.install()
    for name, replacement in (("compile", compile), ("fit", fit), ("evaluate", evaluate), ("predict", predict),
                              ("train_on_batch", train_on_batch), ("test_on_batch", test_on_batch),
                              ("predict_on_batch", predict_on_batch)):
        # Replaced on the class that defines it (Keras's trainer classes), so that Keras's own
        # checks of whether a model overrides compile still see Keras's method.
        owner = next(klass for klass in keras.Model.__mro__ if name in vars(klass))
        original = vars(owner)[name]
        _KERAS_METHODS[name] = original
        wrapped = functools.wraps(original)(replacement)
        wrapped.__doc__ = (original.__doc__ or "") + "\n\nTrained by hpctrain's engine (hpctrain.keras.seam)."
        setattr(owner, name, wrapped)
    keras.Model.plan = _PlanAttribute()


class _PlanAttribute:
    """``model.plan``: the hardware plan hpctrain trains the model with (after ``fit``, with the
    executor and thread count it settled on); ``model.plan.explain()`` says why. A model that
    sets an attribute named ``plan`` of its own keeps it."""

    def __get__(self, model, owner=None):
        if model is None:
            return self
        if "plan" in model.__dict__:
            return model.__dict__["plan"]
        from hpctrain.keras.session import session_of

        return session_of(model).plan

    def __set__(self, model, value):
        model.__dict__["plan"] = value


def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, metrics=None, weighted_metrics=None,
            run_eagerly=False, steps_per_execution=1, jit_compile="auto", auto_scale_loss=True, plan=None):
    """Keras's compile; hpctrain's ``plan`` (``hpctrain.make_plan(...)``) fixes the hardware plan."""
    # Keras on torch refuses steps_per_execution > 1 and maps jit_compile=True to torch.compile;
    # the engine already runs many steps per call and compiles where it measures faster.
    from hpctrain.distribute import get_strategy

    # Set past Keras's attribute tracking: a metric object held here would otherwise be tracked
    # as one of the model's own metrics (``model.metrics`` would list it).
    self.__dict__.update(
        _hpctrain_compile=dict(loss=loss, loss_weights=loss_weights, metrics=metrics,
                               weighted_metrics=weighted_metrics, run_eagerly=bool(run_eagerly),
                               steps_per_execution=steps_per_execution, jit_compile=jit_compile),
        _hpctrain_session=None,
        _hpctrain_strategy=get_strategy())  # as in Keras, a model compiled in a scope trains with it
    if plan is not None:
        if self._hpctrain_strategy is not None:
            raise ValueError("compile(plan=...) inside strategy.scope(): the strategy makes each replica's plan; "
                             "compile outside the scope to pass a plan of your own.")
        from hpctrain.keras.session import session_of

        session_of(self).use_plan(plan)
    keras_jit = jit_compile if not engine_enabled() or jit_compile == "auto" else False
    keras_steps = steps_per_execution if keras.config.backend() != "torch" else 1
    return _KERAS_METHODS["compile"](self, optimizer=optimizer, loss=loss, loss_weights=loss_weights,
                                     metrics=metrics, weighted_metrics=weighted_metrics, run_eagerly=run_eagerly,
                                     steps_per_execution=keras_steps, jit_compile=keras_jit,
                                     auto_scale_loss=auto_scale_loss)


def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, validation_split=0.0,
        validation_data=None, shuffle=True, class_weight=None, sample_weight=None, initial_epoch=0,
        steps_per_epoch=None, validation_steps=None, validation_batch_size=None, validation_freq=1,
        **options):
    arguments = dict(x=x, y=y, batch_size=batch_size, epochs=epochs, verbose=verbose, callbacks=callbacks,
                     validation_split=validation_split, validation_data=validation_data, shuffle=shuffle,
                     class_weight=class_weight, sample_weight=sample_weight, initial_epoch=initial_epoch,
                     steps_per_epoch=steps_per_epoch, validation_steps=validation_steps,
                     validation_batch_size=validation_batch_size, validation_freq=validation_freq)
    _check_options(options, "fit")
    reason = (routing.why_keras_fits(self, x, y, validation_data, callbacks, validation_split) if engine_enabled()
              else "the engine is off")
    if reason is None and routing.reads_batches(self, x, validation_data):
        from hpctrain.keras import loops

        return loops.fit(self, arguments, **options)
    if reason is None:
        from hpctrain.keras.session import build_for_training
        from hpctrain.keras.shuffle_order import builds_on_first_batch

        options["keras_builds_first"] = builds_on_first_batch(self)  # asked before the build below
        build_for_training(self, x, y)
        reason = routing.why_keras_trains_built(self)
    if reason is not None:
        options.pop("keras_builds_first", None)
        routing.announce(self, "fit", verbose, reason, options)
        return _KERAS_METHODS["fit"](self, **arguments)
    from hpctrain.keras.session import session_of

    return session_of(self).fit(arguments, **options)


def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None, steps=None,
             callbacks=None, return_dict=False, **kwargs):
    arguments = dict(x=x, y=y, batch_size=batch_size, verbose=verbose, sample_weight=sample_weight, steps=steps,
                     callbacks=callbacks, return_dict=return_dict, **kwargs)
    reason = routing.why_keras_evaluates(self, x, y, steps, kwargs) if engine_enabled() else "the engine is off"
    if reason is not None:
        return _KERAS_METHODS["evaluate"](self, **arguments)
    if routing.reads_batches(self, x):
        from hpctrain.keras import loops

        return loops.evaluate(self, arguments)
    from hpctrain.keras.session import session_of

    return session_of(self).evaluate(arguments)


def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
    arguments = dict(x=x, batch_size=batch_size, verbose=verbose, steps=steps, callbacks=callbacks)
    reason = routing.why_keras_predicts(self, x, steps, callbacks) if engine_enabled() else "the engine is off"
    if reason is not None:
        return _KERAS_METHODS["predict"](self, **arguments)
    from hpctrain.keras.session import session_of

    return session_of(self).predict(arguments)


def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None, return_dict=False):
    reason = routing.why_keras_trains_on_batch(self, x, y, sample_weight, class_weight) if engine_enabled() else "off"
    if reason is not None:
        return _KERAS_METHODS["train_on_batch"](self, x, y, sample_weight=sample_weight, class_weight=class_weight,
                                                return_dict=return_dict)
    from hpctrain.keras import on_batch

    return on_batch.train_on_batch(self, x, y, sample_weight, class_weight, return_dict)


def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
    reason = routing.why_keras_tests_on_batch(self, x, y) if engine_enabled() else "off"
    if reason is not None:
        return _KERAS_METHODS["test_on_batch"](self, x, y, sample_weight=sample_weight, return_dict=return_dict)
    from hpctrain.keras import on_batch

    return on_batch.test_on_batch(self, x, y, sample_weight, return_dict)


def predict_on_batch(self, x):
    reason = routing.why_keras_predicts(self, x, None) if engine_enabled() else "off"
    if reason is not None:
        return _KERAS_METHODS["predict_on_batch"](self, x)
    from hpctrain.keras import on_batch

    return on_batch.predict_on_batch(self, x)


def _check_options(options: dict, method: str) -> None:
    unknown = sorted(set(options) - set(HPCTRAIN_FIT_OPTIONS))
    if unknown:
        raise TypeError(f"{method}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; besides "
                        f"Keras's own, hpctrain's {method} takes {', '.join(HPCTRAIN_FIT_OPTIONS)}.")
