"""Embedding, Reshape, Rescaling, Softmax and ReLU against plain torch / NumPy; static executor fallbacks."""

import numpy as np
import pytest
import torch

from hpctrain.engine.losses import CrossEntropy
from hpctrain.engine.static_step import why_not_static
from hpctrain.errors import ConfigError, InputError
from hpctrain.keras import layers as L
from hpctrain.keras.models import Sequential
from layer_reference import assert_matches_reference, built


def test_embedding_looks_up_rows_and_sends_gradients_to_them(rng):
    layer = L.Embedding(10, 3)
    ids = rng.integers(0, 10, size=(4, 5))
    assert_matches_reference(layer, ids, lambda ids, table: table[ids.long()], rng=rng, input_grad=False)
    assert layer.get_weights()[0].shape == (10, 3)
    assert layer.compute_output_shape((None, 5)) == (None, 5, 3)


def test_embedding_default_initializer_is_keras_uniform():
    table = built(L.Embedding(1000, 8), np.zeros((1, 2))).get_weights()[0]
    assert table.min() >= -0.05 and table.max() <= 0.05 and table.std() > 0.02


def test_reshape_keeps_the_batch_and_resolves_minus_one(rng):
    layer = L.Reshape((3, -1))
    x = rng.normal(size=(2, 12)).astype("float32")
    assert layer.compute_output_shape((None, 12)) == (None, 3, 4)
    assert_matches_reference(layer, x, lambda x: x.reshape(2, 3, 4), rng=rng)
    with pytest.raises(InputError, match=r"cannot make samples shaped \(12,\) \(12 values\) into \(5, -1\)"):
        L.Reshape((5, -1)).compute_output_shape((None, 12))


def test_rescaling_scales_and_offsets_and_reads_integer_pixels(rng):
    layer = L.Rescaling(1 / 127.5, offset=-1)
    x = rng.normal(size=(2, 3)).astype("float32")
    assert_matches_reference(layer, x, lambda x: x / 127.5 - 1, rng=rng)
    pixels = torch.tensor([[0, 255]], dtype=torch.uint8)
    np.testing.assert_allclose(layer(pixels).numpy(), [[-1.0, 1.0]], atol=1e-6)


@pytest.mark.parametrize("axis", [-1, 1])
def test_softmax_over_an_axis(axis, rng):
    x = rng.normal(size=(2, 3, 4)).astype("float32")
    assert_matches_reference(L.Softmax(axis=axis), x, lambda x: torch.softmax(x, axis), rng=rng)


RELU_CASES = [dict(), dict(max_value=0.5), dict(negative_slope=0.1), dict(threshold=0.3),
              dict(max_value=1.0, negative_slope=0.2, threshold=0.5)]


@pytest.mark.parametrize("arguments", RELU_CASES)
def test_relu_follows_keras_formula(arguments, rng):
    max_value, slope, threshold = (arguments.get("max_value"), arguments.get("negative_slope", 0.0),
                                   arguments.get("threshold", 0.0))

    def reference(x):  # Keras docs: max_value above it, x from threshold, slope * (x - threshold) below
        y = torch.where(x >= threshold, x, slope * (x - threshold))
        return y if max_value is None else torch.minimum(y, torch.tensor(max_value, dtype=x.dtype))

    x = rng.normal(size=(4, 7)).astype("float32")
    assert_matches_reference(L.ReLU(**arguments), x, reference, rng=rng)


def test_softmax_layer_is_folded_into_the_loss_like_dense_softmax(rng):
    x, y = rng.normal(size=(32, 5)).astype("float32"), rng.integers(0, 3, size=32)
    layered = Sequential([L.Input(shape=(5,)), L.Dense(3), L.Softmax()])
    fused = Sequential([L.Input(shape=(5,)), L.Dense(3, activation="softmax")])
    fused.set_weights(layered.get_weights())
    for model in (layered, fused):
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        model.fit(x, y, epochs=2, batch_size=8, verbose=0, shuffle=False)
    for a, b in zip(layered.get_weights(), fused.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert "executor: static" in layered.plan.explain()


@pytest.mark.parametrize("make_layer", [
    lambda: L.Conv1D(2, 1), lambda: L.Conv2D(2, 1), lambda: L.MaxPooling2D(1), lambda: L.AveragePooling2D(1),
    lambda: L.GlobalAveragePooling2D(), lambda: L.BatchNormalization(), lambda: L.LayerNormalization(),
    lambda: L.Embedding(4, 2), lambda: L.Reshape((-1,)), lambda: L.Rescaling(0.5), lambda: L.Softmax(axis=1),
    lambda: L.ReLU(max_value=6.0), lambda: L.LSTM(2), lambda: L.GRU(2),
])
def test_every_new_layer_sends_the_engine_to_autograd(make_layer):
    layer = make_layer()
    shape = {"Conv2D": (2, 2, 3), "MaxPooling2D": (2, 2, 3), "AveragePooling2D": (2, 2, 3),
             "GlobalAveragePooling2D": (2, 2, 3), "Softmax": (2, 3)}.get(type(layer).__name__, (2, 3))
    model = Sequential([L.Input(shape=shape), layer, L.Flatten(), L.Dense(2)])
    assert why_not_static(model, CrossEntropy(sparse=True, from_logits=True)) == "some layer has no backward the engine knows"


def test_plain_relu_layer_keeps_the_static_executor():
    model = Sequential([L.Input(shape=(3,)), L.Dense(4), L.ReLU(), L.Dense(2)])
    assert why_not_static(model, CrossEntropy(sparse=True, from_logits=True)) is None


def test_embedding_options_without_support_are_refused():
    with pytest.raises(ConfigError, match="Embedding mask_zero=True is not supported yet"):
        L.Embedding(10, 2, mask_zero=True)
