"""``train_on_batch``/``test_on_batch``/``predict_on_batch`` on the engine.

Each is the engine's ``fit``/``evaluate``/``predict`` over the one batch given (one step, with the
batch's rows as the batch size), so the weights, the optimizer's state and count, and the metric
objects are left as Keras's own method leaves them: Keras resets the metrics before the batch,
so its logs are that batch's alone. ``model.history`` keeps the last ``fit``'s.
"""

from __future__ import annotations

from hpctrain.keras.session import session_of

_ONE_EPOCH = dict(epochs=1, verbose=0, callbacks=None, validation_split=0.0, validation_data=None, shuffle=False,
                  initial_epoch=0, steps_per_epoch=None, validation_steps=None, validation_batch_size=None,
                  validation_freq=1)


def train_on_batch(model, x, y, sample_weight, class_weight, return_dict: bool):
    kept_history = getattr(model, "history", None)
    history = session_of(model).fit(dict(x=x, y=y, batch_size=len(x), sample_weight=sample_weight,
                                         class_weight=class_weight, **_ONE_EPOCH))
    model.history = kept_history
    return _as_keras_returns(model, {name: values[-1] for name, values in history.history.items()}, return_dict)


def test_on_batch(model, x, y, sample_weight, return_dict: bool):
    logs = session_of(model).evaluate(dict(x=x, y=y, batch_size=len(x), verbose=0, sample_weight=sample_weight,
                                           steps=None, callbacks=None, return_dict=True))
    return _as_keras_returns(model, logs, return_dict)


def predict_on_batch(model, x):
    return session_of(model).predict(dict(x=x, batch_size=len(x), verbose=0, steps=None, callbacks=None))


def _as_keras_returns(model, logs: dict, return_dict: bool):
    return logs if return_dict else model._flatten_metrics_in_order(logs)
