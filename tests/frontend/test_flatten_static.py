"""A Sequential that starts with Flatten (the TF beginner tutorial's model) trains on the static
executor, on its rows flattened once, equal to Keras's own fit."""

import numpy as np
import torch

from hpctrain import keras
from twins import max_difference, optimizer_values, twin_fits


def _beginner_model():
    model = keras.Sequential([keras.layers.Flatten(input_shape=(6, 5)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(4)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def _images():
    rng = np.random.default_rng(1)
    x = rng.random((96, 6, 5), dtype=np.float32)
    return x, (x.reshape(96, -1) @ rng.normal(size=(30, 4))).argmax(1)


def test_a_leading_flatten_trains_on_the_static_executor_as_keras_fits():
    x, y = _images()
    (ours, history), (reference, reference_history) = twin_fits(_beginner_model, x, y, epochs=2, batch_size=32,
                                                                validation_split=0.25)
    assert dict(ours.plan.reasons)["executor"] == "static (every layer and the loss have a known backward)"
    assert max_difference(ours.get_weights(), reference.get_weights()) < 1e-5
    assert max_difference(optimizer_values(ours), optimizer_values(reference)) < 1e-5
    for key, values in reference_history.history.items():
        np.testing.assert_allclose(history.history[key], values, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.predict(x, verbose=0), reference.predict(x, verbose=0), atol=1e-5)
    # The engine's module takes the rows flattened too (a training batch replayed to find a bad output).
    module = ours._hpctrain_session.trainer.module
    rows = torch.as_tensor(x[:3])
    torch.testing.assert_close(module(rows.reshape(3, -1)), module(rows))


def test_a_channels_first_flatten_is_left_to_autograd():
    model = keras.Sequential([keras.Input((2, 3, 5)), keras.layers.Flatten(data_format="channels_first", name="to_rows"),
                              keras.layers.Dense(4)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(2).random((32, 2, 3, 5), dtype=np.float32)
    model.fit(x, np.arange(32) % 4, epochs=1, verbose=0)
    assert dict(model.plan.reasons)["executor"] == (
        "autograd (some layer has no backward the engine knows: layer 'to_rows' (Flatten): it transposes "
        "channels-first data)")
