"""Each optimizer's ``fit`` steps equal the same updates computed by hand with autograd."""

import numpy as np
import pytest
import torch

from conftest import small_classification, torch_float64
from hpctrain.keras import optimizers
from hpctrain.keras.layers import Dense
from hpctrain.keras.models import Sequential

STEPS = 3


def _grads(weights, x, y):
    w1, b1, w2, b2 = weights
    logits = torch.relu(x @ w1 + b1) @ w2 + b2
    loss = torch.nn.functional.cross_entropy(logits, y)
    return torch.autograd.grad(loss, weights)


def sgd(lr=0.01, momentum=0.0, nesterov=False):
    def update(w, g, state, t):
        # Keras's form: m = momentum*m - lr*g; w += m (nesterov: w += momentum*m - lr*g).
        m = state.setdefault("m", torch.zeros_like(w))
        m.mul_(momentum).sub_(lr * g)
        return w + (momentum * m - lr * g if nesterov else m)
    return update


def adam(lr=0.001, beta_1=0.9, beta_2=0.999, eps=1e-7, weight_decay=0.0):
    def update(w, g, state, t):
        w = w * (1 - lr * weight_decay)
        m = state.setdefault("m", torch.zeros_like(w))
        v = state.setdefault("v", torch.zeros_like(w))
        m.mul_(beta_1).add_((1 - beta_1) * g)
        v.mul_(beta_2).add_((1 - beta_2) * g * g)
        # PyTorch's epsilon placement: added to sqrt of the bias-corrected second moment.
        denom = v.sqrt() / np.sqrt(1 - beta_2**t) + eps
        return w - lr / (1 - beta_1**t) * m / denom
    return update


def rmsprop(lr=0.001, rho=0.9, momentum=0.0, eps=1e-7):
    def update(w, g, state, t):
        v = state.setdefault("v", torch.zeros_like(w))
        v.mul_(rho).add_((1 - rho) * g * g)
        step = g / (v.sqrt() + eps)
        if momentum:
            buf = state.setdefault("buf", torch.zeros_like(w))
            buf.mul_(momentum).add_(step)
            step = buf
        return w - lr * step
    return update


CASES = {
    "sgd": (lambda: optimizers.SGD(learning_rate=0.1), sgd(0.1)),
    "sgd_momentum": (lambda: optimizers.SGD(learning_rate=0.1, momentum=0.9), sgd(0.1, 0.9)),
    "sgd_nesterov": (lambda: optimizers.SGD(learning_rate=0.1, momentum=0.9, nesterov=True), sgd(0.1, 0.9, True)),
    "adam": (lambda: optimizers.Adam(learning_rate=0.01), adam(0.01)),
    "adam_by_name": (lambda: "adam", adam(0.001)),
    "adamw": (lambda: optimizers.AdamW(learning_rate=0.01, weight_decay=0.1), adam(0.01, weight_decay=0.1)),
    "rmsprop": (lambda: optimizers.RMSprop(learning_rate=0.01), rmsprop(0.01)),
    "rmsprop_momentum": (lambda: optimizers.RMSprop(learning_rate=0.01, momentum=0.5), rmsprop(0.01, momentum=0.5)),
    "sgd_by_name": (lambda: "sgd", sgd(0.01)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fit_steps_match_hand_computed_updates(case, rng):
    make_optimizer, hand_update = CASES[case]
    x, y = small_classification(rng, n=16, features=5, classes=3)
    model = Sequential([Dense(7, activation="relu", input_dim=5), Dense(3, activation="softmax")])
    model.compile(optimizer=make_optimizer(), loss="sparse_categorical_crossentropy")
    initial = model.get_weights()

    # One full batch per epoch and no shuffling: each epoch is exactly one update.
    model.fit(x, y, epochs=STEPS, batch_size=len(x), shuffle=False, verbose=0)

    weights = torch_float64(initial)
    states = [{} for _ in weights]
    xt, yt = torch.tensor(x, dtype=torch.float64), torch.tensor(y)
    for t in range(1, STEPS + 1):
        grads = _grads(weights, xt, yt)
        with torch.no_grad():
            weights = [hand_update(w, g, s, t) for w, g, s in zip(weights, grads, states)]
        weights = [w.detach().requires_grad_() for w in weights]
    for got, expected in zip(model.get_weights(), weights):
        np.testing.assert_allclose(got, expected.detach().numpy(), atol=1e-6, rtol=0)
    assert not np.allclose(model.get_weights()[0], initial[0])  # the steps did move the weights


def test_learning_rate_is_readable_and_settable_after_compile(rng):
    x, y = small_classification(rng)
    opt = optimizers.Adam(learning_rate=0.01)
    model = Sequential([Dense(3, activation="softmax", input_dim=6)])
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    assert model.optimizer is opt and opt.learning_rate == pytest.approx(0.01)
    opt.learning_rate = 0.0
    before = model.get_weights()
    model.fit(x, y, epochs=1, verbose=0)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # a zero rate really reached the running optimizer
    assert opt.iterations == 4  # 64 samples / batch 32, twice


@pytest.mark.parametrize("executor", ["static", "autograd"])
def test_sgd_counts_its_updates_though_its_state_keeps_no_step(rng, executor):
    x, y = small_classification(rng)  # 64 rows
    opt = optimizers.SGD(learning_rate=0.01, momentum=0.9)
    model = Sequential([Dense(3, activation="softmax", input_dim=6)])
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", run_eagerly=executor == "autograd")
    assert opt.iterations == 0
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert opt.iterations == 8
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert opt.iterations == 10
    assert model.plan.executor == executor


def test_keras_defaults():
    adam_opt = optimizers.Adam()
    assert (adam_opt.learning_rate, adam_opt.beta_1, adam_opt.beta_2, adam_opt.epsilon) == (0.001, 0.9, 0.999, 1e-7)
    assert optimizers.SGD().learning_rate == 0.01
    assert optimizers.RMSprop().rho == 0.9
    assert optimizers.AdamW().weight_decay == 0.004


def test_fastest_kernel_is_chosen_for_the_device():
    from hpctrain.engine.optim import fastest_kernel_options

    assert fastest_kernel_options(torch.optim.Adam, torch.device("cpu")) == {"fused": True}
    assert fastest_kernel_options(torch.optim.RMSprop, torch.device("cpu")) == {"foreach": True}
