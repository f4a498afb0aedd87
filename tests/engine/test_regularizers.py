"""L1/L2 regularization adds exactly its penalty to the loss, and its gradient to the update."""

import numpy as np
import pytest
import torch

from conftest import small_classification, torch_float64
from hpctrain.keras import regularizers
from hpctrain.keras.layers import Dense
from hpctrain.keras.models import Sequential
from hpctrain.keras.optimizers import SGD


def _model(kernel_regularizer=None, bias_regularizer=None):
    model = Sequential([
        Dense(4, activation="tanh", input_dim=6, kernel_regularizer=kernel_regularizer,
              bias_regularizer=bias_regularizer, bias_initializer="ones"),
        Dense(3, activation="softmax", kernel_regularizer=kernel_regularizer),
    ])
    model.compile(optimizer=SGD(learning_rate=0.1), loss="sparse_categorical_crossentropy")
    return model


@pytest.mark.parametrize("kernel_reg, bias_reg", [
    (regularizers.L2(0.01), None),
    (regularizers.L1(0.02), regularizers.L2(0.5)),
    (regularizers.L1L2(l1=0.01, l2=0.03), regularizers.L1(0.1)),
    ("l2", None),
])
def test_penalty_is_added_to_the_loss_exactly(kernel_reg, bias_reg, rng):
    x, y = small_classification(rng)
    plain = _model()
    regularized = _model(kernel_reg, bias_reg)
    regularized.set_weights(plain.get_weights())
    w1, b1, w2, _ = plain.get_weights()
    kernel = regularizers.get(kernel_reg)
    expected_penalty = sum(float(kernel(torch.tensor(w))) for w in (w1, w2))
    if bias_reg is not None:
        expected_penalty += float(regularizers.get(bias_reg)(torch.tensor(b1)))
    assert expected_penalty > 0
    difference = regularized.evaluate(x, y, verbose=0) - plain.evaluate(x, y, verbose=0)
    assert difference == pytest.approx(expected_penalty, abs=1e-6)


def test_l2_gradient_reaches_the_update(rng):
    x, y = small_classification(rng)
    model = _model(regularizers.L2(0.05))
    initial = model.get_weights()
    model.fit(x, y, epochs=1, batch_size=len(x), shuffle=False, verbose=0)

    w1, b1, w2, b2 = torch_float64(initial)
    logits = torch.tanh(torch.tensor(x, dtype=torch.float64) @ w1 + b1) @ w2 + b2
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(y))
    loss = loss + 0.05 * (w1.square().sum() + w2.square().sum())
    grads = torch.autograd.grad(loss, [w1, b1, w2, b2])
    for got, w, g in zip(model.get_weights(), [w1, b1, w2, b2], grads):
        np.testing.assert_allclose(got, (w - 0.1 * g).detach().numpy(), atol=1e-6, rtol=0)


def test_regularizer_formulas():
    w = torch.tensor([[1.0, -2.0], [3.0, -4.0]])
    assert float(regularizers.L1(0.1)(w)) == pytest.approx(1.0)
    assert float(regularizers.L2(0.1)(w)) == pytest.approx(3.0)
    assert float(regularizers.L1L2(l1=0.1, l2=0.1)(w)) == pytest.approx(4.0)
    assert regularizers.L2().l2 == 0.01  # Keras's default
