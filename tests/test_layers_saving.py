"""get_config/from_config and model.save/load_model round-trip every layer of the Keras layer set."""

import numpy as np
import pytest
import torch

from hpctrain.keras import layers as L
from hpctrain.keras import regularizers
from hpctrain.keras.models import Sequential, load_model

MODELS = {
    "image": lambda: Sequential([
        L.Input(shape=(8, 8, 3)), L.Rescaling(1 / 255, offset=0.1),
        L.Conv2D(4, (3, 2), strides=2, padding="same", dilation_rate=1, kernel_regularizer=regularizers.L2(0.01),
                 kernel_initializer="he_normal"),
        L.BatchNormalization(momentum=0.9, epsilon=1e-2), L.ReLU(max_value=6.0),
        L.MaxPooling2D(2, strides=1, padding="same"), L.AveragePooling2D(pool_size=(2, 1), padding="same"),
        L.Conv2D(4, 1, use_bias=False, groups=2), L.GlobalAveragePooling2D(keepdims=True), L.Reshape((-1,)),
        L.Dense(3), L.Softmax(),
    ]),
    "sequence": lambda: Sequential([
        L.Input(shape=(9, 3)), L.Conv1D(6, 3, padding="causal", dilation_rate=2, activation="tanh"),
        L.LayerNormalization(center=False), L.GRU(5, return_sequences=True), L.LSTM(4, unit_forget_bias=False),
        L.ReLU(negative_slope=0.1, threshold=0.2), L.Softmax(axis=-1),
    ]),
    "text": lambda: Sequential([
        L.Input(shape=(7,)), L.Embedding(20, 4, embeddings_regularizer=regularizers.L1(1e-3)),
        L.Reshape((14, 2)), L.Softmax(axis=1), L.Flatten(), L.Dense(2),
    ]),
}


def _inputs(name, rng):
    if name == "text":
        return rng.integers(0, 20, size=(5, 7)).astype("float32")
    shape = {"image": (5, 8, 8, 3), "sequence": (5, 9, 3)}[name]
    return (rng.random(shape) * (255 if name == "image" else 1)).astype("float32")


def test_the_models_cover_every_registered_layer():
    used = {type(layer).__name__ for make in MODELS.values() for layer in make().layers}
    families = ("layers_conv", "layers_core", "layers_norm", "layers_recurrent")
    new_layers = {name for name, cls in L.LAYERS.items() if cls.__module__.rsplit(".", 1)[-1] in families}
    assert len(new_layers) == 14 and new_layers <= used


@pytest.mark.parametrize("name", sorted(MODELS))
def test_layer_configs_round_trip(name):
    for layer in MODELS[name]().layers:
        again = type(layer).from_config(layer.get_config())
        assert again.get_config() == layer.get_config()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_save_and_load_model_give_equal_outputs(name, tmp_path, rng):
    model = MODELS[name]()
    x = _inputs(name, rng)
    with torch.no_grad():  # a training-mode pass moves BatchNormalization's statistics off their start
        model.train()
        model(torch.tensor(x))
    model.save(tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")
    assert loaded.get_config() == model.get_config()
    for saved, restored in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(saved, restored)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_batch_normalization_statistics_survive_save_weights(tmp_path, rng):
    model = MODELS["image"]()
    with torch.no_grad():
        model.train()
        model(torch.tensor(_inputs("image", rng)))
    model.save_weights(tmp_path / "w.safetensors")
    fresh = MODELS["image"]()
    fresh.load_weights(tmp_path / "w.safetensors")
    moving_mean = model.layers[2].get_weights()[2]
    assert np.abs(moving_mean).sum() > 0
    np.testing.assert_array_equal(fresh.layers[2].get_weights()[2], moving_mean)
