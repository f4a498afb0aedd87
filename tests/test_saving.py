"""model.save / load_model: architecture as JSON plus safetensors weights; nothing executable."""

import json
import zipfile

import numpy as np
import pytest

import hpctrain as tf
from hpctrain.errors import ConfigError, InputError
from hpctrain.keras import regularizers
from hpctrain.keras.layers import Activation, Dense, Dropout, Flatten, Input
from hpctrain.keras.models import Sequential, load_model


def _every_layer_model():
    return Sequential([
        Flatten(input_shape=(4, 5)),
        Dense(8, activation="relu", kernel_regularizer=regularizers.L2(0.01), bias_regularizer=regularizers.L1(0.1),
              kernel_initializer="he_normal"),
        Dropout(0.3),
        Dense(6, activation="tanh", use_bias=False),
        Dense(3),
        Activation("softmax"),
    ])


def test_round_trip_keeps_architecture_weights_and_predictions(tmp_path, rng):
    model = _every_layer_model()
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = load_model(path)
    assert loaded.get_config() == model.get_config()
    assert [type(layer).__name__ for layer in loaded.layers] == ["Flatten", "Dense", "Dropout", "Dense", "Dense",
                                                                 "Activation"]
    x = rng.random((7, 4, 5)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert loaded.layers[1].kernel_regularizer.l2 == 0.01 and loaded.layers[1].bias_regularizer.l1 == 0.1
    with zipfile.ZipFile(path) as archive:  # JSON and safetensors only: no pickles anywhere
        assert sorted(archive.namelist()) == ["config.json", "model.weights.safetensors"]
        assert json.loads(archive.read("config.json"))["class_name"] == "Sequential"


def test_a_loaded_model_trains_after_compile(tmp_path, rng):
    model = Sequential([Input(shape=(6,)), Dense(3, activation="softmax")])
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    loaded.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    history = loaded.fit(rng.random((32, 6)).astype("float32"), rng.integers(0, 3, size=32), epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2


def test_custom_activation_cannot_be_saved_and_says_so(tmp_path):
    model = Sequential([Dense(2, activation=lambda x: x * 2, input_dim=3)])
    with pytest.raises(ConfigError, match="not one of the named activations"):
        model.save(tmp_path / "m.keras")


def test_loading_something_else_is_a_clear_error(tmp_path):
    bogus = tmp_path / "bogus.keras"
    bogus.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="is not a model saved by model.save"):
        load_model(bogus)
    with pytest.raises(InputError, match="no saved model at"):
        load_model(tmp_path / "missing.keras")
    assert tf.keras.models.load_model is load_model
