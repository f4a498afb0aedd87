"""Shuffled fits walk Keras's own sample order: hpctrain's fit equals Keras's own torch fit from the
same seed (weights, History), and leaves torch's global RNG exactly where Keras's fit leaves it."""

import numpy as np
import pytest
import torch

from hpctrain import keras
from hpctrain.engine.callbacks import BackupAndRestore
from hpctrain.keras import shuffle_order
from twins import keras_own_loop, max_difference

ROWS, BATCH = 103, 16  # 16 does not divide 103: a short last batch


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 12)).astype("float32")
    return x, (x @ rng.normal(size=(12, 3))).argmax(1)


def _model():
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _fit_run(fits, *, own_loop: bool):
    """A model from seed 5 through ``fits`` (a list of fit keyword sets); its weights, last History
    and torch's RNG state after."""
    keras.utils.set_random_seed(5)
    model, (x, y) = _model(), _data()
    history = None
    for arguments in fits:
        if own_loop:
            with keras_own_loop():
                history = model.fit(x, y, verbose=0, **arguments)
        else:
            history = model.fit(x, y, verbose=0, **arguments)
    return model.get_weights(), history.history, torch.get_rng_state()


def _assert_equal_to_keras(fits):
    weights, history, rng_after = _fit_run(fits, own_loop=False)
    want_weights, want_history, want_rng_after = _fit_run(fits, own_loop=True)
    assert max_difference(weights, want_weights) < 1e-5
    assert sorted(history) == sorted(want_history)
    for key, values in want_history.items():
        np.testing.assert_allclose(history[key], values, rtol=1e-5, atol=1e-6)
    assert torch.equal(rng_after, want_rng_after)  # the stream is Keras's, draw for draw


def _validation_data():
    x, y = _data()
    return x[:37], y[:37]


@pytest.mark.parametrize("arguments", [
    dict(),
    dict(validation_split=0.2),
    dict(validation_data=_validation_data()),
    dict(validation_data=_validation_data(), validation_freq=2),
    dict(validation_split=0.25, validation_batch_size=8, validation_steps=2),
    dict(shuffle="batch", validation_split=0.2),
    dict(shuffle=False, validation_split=0.2),
], ids=["shuffled", "validation_split", "validation_data", "validation_freq", "validation_steps", "batch",
        "unshuffled"])
def test_three_epochs_equal_keras_own_fit(arguments):
    # With validation_steps each validation pass starts again at the first batch, in both.
    _assert_equal_to_keras([dict(epochs=3, batch_size=BATCH, **arguments)])


def test_a_second_fit_carries_on_keras_stream():
    # The second fit finds the model built: Keras then draws no first batch to build with.
    _assert_equal_to_keras([dict(epochs=2, batch_size=BATCH, validation_split=0.2),
                            dict(epochs=2, batch_size=BATCH, shuffle=False),
                            dict(epochs=2, batch_size=BATCH)])


def test_steps_per_epoch_carrying_a_pass_over_epochs_equals_keras():
    # 7 batches a pass, 3 an epoch: passes end inside epochs 3 and 5 (each then cut short, as in Keras).
    _assert_equal_to_keras([dict(epochs=5, batch_size=BATCH, steps_per_epoch=3, validation_split=0.0)])


class _Crash(Exception):
    pass


class _CrashAtBatch(keras.callbacks.Callback):
    def __init__(self, at):
        super().__init__()
        self.at, self.seen = at, 0

    def on_train_batch_begin(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            raise _Crash


def test_a_run_killed_mid_epoch_resumes_in_keras_order(tmp_path):
    def fit(crash_at=None):
        keras.utils.set_random_seed(5)
        model, (x, y) = _model(), _data()
        callbacks = [BackupAndRestore(str(tmp_path / "backup"), save_freq=2)]
        try:
            model.fit(x, y, epochs=4, batch_size=BATCH, verbose=0, validation_split=0.2,
                      callbacks=callbacks + ([_CrashAtBatch(crash_at)] if crash_at else []))
        except _Crash:
            return None
        return model.get_weights(), torch.get_rng_state()

    assert fit(crash_at=9) is None  # in the second epoch's pass (6 batches of 16 in 82 rows)
    assert any((tmp_path / "backup").iterdir())  # a checkpoint to resume from
    assert fit(crash_at=10) is None  # resumed at that epoch's step 2, killed in the fourth epoch
    weights, rng_after = fit()
    want_weights, _, want_rng_after = _fit_run([dict(epochs=4, batch_size=BATCH, validation_split=0.2)],
                                               own_loop=True)
    assert max_difference(weights, want_weights) < 1e-5
    assert torch.equal(rng_after, want_rng_after)


def test_keras_draws_per_validation_pass():
    def draws(**arguments):
        values = dict(shuffle=True, batch_size=10, rows=80, validation_rows=40) | arguments
        return shuffle_order.draws_for_fit(**values).validation_draws

    assert draws(validation_rows=0) == 0
    assert draws() == 2  # the pass's loader, then the next one's as the pass ends
    assert draws(validation_steps=3) == 1  # a pass cut short makes no next loader
    assert draws(validation_steps=4) == 2
    assert shuffle_order.split_rows(103, 0.2, None) == (82, 21)
