"""Callbacks are told what Keras's own loops tell them in ``params``, whichever loop runs."""

import numpy as np
import pytest

from hpctrain import keras

from twins import keras_own_loop


class ParamsSeen(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = {}

    def on_train_begin(self, logs=None):
        self.seen["train"] = dict(self.params)

    def on_test_begin(self, logs=None):
        self.seen.setdefault("test", dict(self.params))

    def on_predict_begin(self, logs=None):
        self.seen["predict"] = dict(self.params)


def _params_of_each_call(verbose):
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 4), dtype=np.float32), rng.integers(0, 2, 64)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    seen = {}
    for call, run in (("fit", lambda c: model.fit(x, y, epochs=2, verbose=verbose, callbacks=c, validation_split=0.25)),
                      ("evaluate", lambda c: model.evaluate(x, y, verbose=verbose, callbacks=c)),
                      ("predict", lambda c: model.predict(x, verbose=verbose, callbacks=c))):
        probe = ParamsSeen()
        run([probe])
        seen[call] = probe.seen
    return seen


@pytest.mark.parametrize("verbose", ["auto", 0, 2])
def test_callbacks_see_the_verbose_epochs_and_steps_keras_gives(verbose):
    ours = _params_of_each_call(verbose)
    with keras_own_loop():
        reference = _params_of_each_call(verbose)
    assert ours == reference
    assert ours["fit"]["train"] == {"verbose": verbose, "epochs": 2, "steps": 2}
