"""A Keras model compiled in a MirroredStrategy scope trains in two spawned replicas as in one process."""

import numpy as np

import hpctrain as tf
from hpctrain import keras
from twins import max_difference, optimizer_values


def _model():
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_two_spawned_replicas_equal_one_process(capfd):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 12)).astype("float32")
    y = (x @ rng.normal(size=(12, 3))).argmax(1)
    strategy = tf.distribute.MirroredStrategy(["cpu:0", "cpu:1"])
    keras.utils.set_random_seed(0)
    with strategy.scope():
        replicated = _model()
    history = replicated.fit(x, y, epochs=2, batch_size=32, verbose=2, shuffle=False)
    printed = capfd.readouterr().out
    keras.utils.set_random_seed(0)
    single = _model()
    reference = single.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
    assert max_difference(replicated.get_weights(), single.get_weights()) < 1e-5
    assert max_difference(optimizer_values(replicated), optimizer_values(single)) < 1e-5
    assert int(replicated.optimizer.iterations.numpy()) == 16
    np.testing.assert_allclose(history.history["loss"], reference.history["loss"], rtol=1e-5)
    assert history.history["accuracy"] == reference.history["accuracy"]
    # What runs is said once, and each epoch's line printed once: by the first replica alone.
    assert printed.count("hpctrain: fit runs on the engine") == 1
    assert printed.count("Epoch 2/2") == 1
