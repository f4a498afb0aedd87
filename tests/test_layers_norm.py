"""BatchNormalization and LayerNormalization against float64 torch formulas and NumPy moving statistics."""

import numpy as np
import pytest
import torch

import hpctrain as tf
from hpctrain.errors import ConfigError
from hpctrain.keras.layers import BatchNormalization, Conv2D, Dense, Input, LayerNormalization
from hpctrain.keras.models import Sequential
from layer_reference import assert_matches_reference, built


def _normalized(x, dims, epsilon):
    mean = x.mean(dims, keepdim=True)
    variance = ((x - mean) ** 2).mean(dims, keepdim=True)
    return (x - mean) / torch.sqrt(variance + epsilon)


@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 4, 5)])
def test_batch_normalization_training_matches_the_formula(shape, rng):
    layer = BatchNormalization()
    x = rng.normal(loc=2.0, size=shape).astype("float32")
    dims = tuple(range(len(shape) - 1))  # every axis but the channels (the last)

    def reference(x, gamma, beta, moving_mean, moving_variance):
        return _normalized(x, dims, 1e-3) * gamma + beta

    layer.train()
    assert_matches_reference(layer, x, reference, rng=rng)


def test_batch_normalization_moving_statistics_follow_keras(rng):
    layer = built(BatchNormalization(momentum=0.9), np.zeros((1, 4)))
    batches = [rng.normal(loc=3.0, scale=2.0, size=(8, 4)).astype("float32") for _ in range(3)]
    layer.train()
    mean, variance = np.zeros(4), np.ones(4)
    for batch in batches:
        layer(torch.tensor(batch))
        # Keras: moving = moving * momentum + batch_statistic * (1 - momentum), biased variance.
        mean = mean * 0.9 + batch.mean(0) * 0.1
        variance = variance * 0.9 + batch.var(0) * 0.1
    gamma, beta, moving_mean, moving_variance = layer.get_weights()
    np.testing.assert_allclose(moving_mean, mean, rtol=1e-5)
    np.testing.assert_allclose(moving_variance, variance, rtol=1e-5)

    layer.eval()  # inference uses the moving statistics
    x = rng.normal(size=(5, 4)).astype("float32")
    expected = (x - mean) / np.sqrt(variance + 1e-3) * gamma + beta
    np.testing.assert_allclose(layer(torch.tensor(x)).detach().numpy(), expected, atol=1e-5)


def test_batch_normalization_weights_are_in_keras_order_and_the_statistics_do_not_train():
    model = Sequential([Input(shape=(4, 4, 3)), Conv2D(2, 3), BatchNormalization()])
    layer = model.layers[1]
    assert [tuple(w.shape) for w in layer.get_weights()] == [(2,), (2,), (2,), (2,)]
    assert layer.trainable_weights == [layer.gamma, layer.beta]
    assert layer.non_trainable_weights == [layer.moving_mean, layer.moving_variance]
    np.testing.assert_array_equal(np.stack(layer.get_weights()), [[1, 1], [0, 0], [0, 0], [1, 1]])
    layer.trainable = False
    layer.trainable = True  # making the layer trainable again never makes the statistics trainable
    assert layer.non_trainable_weights == [layer.moving_mean, layer.moving_variance]
    assert "Non-trainable params: 4 (16.00 B)" in _summary(model)


def test_a_frozen_batch_normalization_runs_in_inference_mode(rng):
    layer = built(BatchNormalization(trainable=False), np.zeros((1, 3)))
    layer.train()
    x = rng.normal(loc=5.0, size=(6, 3)).astype("float32")
    np.testing.assert_allclose(layer(torch.tensor(x)).detach().numpy(), x / np.sqrt(1 + 1e-3), rtol=1e-6)
    np.testing.assert_array_equal(layer.moving_mean.detach().numpy(), np.zeros(3))


def test_fit_updates_the_moving_statistics_and_predict_uses_them(rng):
    x = rng.normal(loc=4.0, size=(64, 3)).astype("float32")
    y = rng.integers(0, 2, size=64)
    model = Sequential([Input(shape=(3,)), BatchNormalization(), Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False)
    moving_mean = model.layers[0].get_weights()[2]
    assert np.all(moving_mean > 0.2)  # 8 updates of 1% each towards a mean of ~4
    gamma, beta, mean, variance = model.layers[0].get_weights()
    kernel, bias = model.layers[1].get_weights()
    logits = ((x - mean) / np.sqrt(variance + 1e-3) * gamma + beta) @ kernel + bias
    expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-5)


@pytest.mark.parametrize("center, scale", [(True, True), (False, True), (True, False)])
def test_layer_normalization_matches_the_formula(center, scale, rng):
    layer = LayerNormalization(center=center, scale=scale)
    x = rng.normal(size=(2, 3, 6)).astype("float32")

    def reference(x, *weights):
        weights = list(weights)
        y = _normalized(x, (-1,), 1e-3)
        y = y * weights.pop(0) if scale else y
        return y + weights.pop(0) if center else y

    assert_matches_reference(layer, x, reference, rng=rng)
    assert len(layer.get_weights()) == center + scale


def test_layer_normalization_on_another_axis_is_refused():
    with pytest.raises(ConfigError, match=r"only the last axis \(axis=-1\) is supported; got axis=1 for inputs "
                                          r"shaped \(None, 3, 4\)"):
        Sequential([Input(shape=(3, 4)), LayerNormalization(axis=1)])


def _summary(model):
    lines = []
    model.summary(print_fn=lines.append)
    return "\n".join(lines)


def test_keras_defaults():
    assert (BatchNormalization().momentum, BatchNormalization().epsilon) == (0.99, 1e-3)
    assert LayerNormalization().epsilon == 1e-3
    assert tf.keras.layers.BatchNormalization is BatchNormalization


def test_a_batch_of_one_row_normalizes_to_beta_as_in_keras(rng):
    """fit's last partial batch can be one row; PyTorch's kernel would refuse it."""
    layer = built(BatchNormalization(momentum=0.5), np.zeros((1, 3)))
    layer.set_weights([np.full(3, 2.0), np.array([0.1, 0.2, 0.3]), np.zeros(3), np.ones(3)])
    layer.train()
    x = torch.tensor([[4.0, -1.0, 7.0]], requires_grad=True)
    out = layer(x)
    np.testing.assert_allclose(out.detach().numpy(), [[0.1, 0.2, 0.3]], rtol=1e-6)
    out.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.zeros((1, 3)))
    np.testing.assert_allclose(layer.get_weights()[2], [2.0, -0.5, 3.5])  # 0 * 0.5 + x * 0.5
    np.testing.assert_allclose(layer.get_weights()[3], [0.5, 0.5, 0.5])  # 1 * 0.5 + 0 * 0.5
