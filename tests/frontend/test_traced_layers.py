"""A user's own layer whose call reads as linear layers, activations and a residual sum trains on
the static executor, equal to Keras's own fit; any other call is left to Keras's path."""

import numpy as np
import pytest
import torch
from twins import (
    assert_static_and_equal,
    max_difference,
    residual_dense_class,
    twin_fits,
)

from hpctrain import keras
from hpctrain.engine.static_layers import Activation, Linear, ResidualAdd, ResidualStart
from hpctrain.keras.traced_layers import traced_static_layers

ops, layers = keras.ops, keras.layers


class _Weighted(layers.Layer):
    """A square kernel and a bias, and the ``call`` each test gives."""

    def __init__(self, call, extra_weight=False, **kwargs):
        super().__init__(**kwargs)
        self._call, self.extra_weight = call, extra_weight

    def build(self, input_shape):
        width = input_shape[-1]
        self.kernel = self.add_weight(shape=(width, width), initializer="glorot_uniform", name="kernel")
        self.bias = self.add_weight(shape=(width,), initializer="random_normal", name="bias")
        if self.extra_weight:
            self.scale = self.add_weight(shape=(width,), initializer="ones", name="scale")

    def call(self, inputs):
        return self._call(self, inputs)


ResidualDense = residual_dense_class()


class TwoLayerBlock(layers.Layer):
    """``x + W2 tanh(x W1 + b1)``: a residual branch of two products, in torch's operators."""

    def build(self, input_shape):
        width = input_shape[-1]
        self.w1 = self.add_weight(shape=(width, 5), initializer="glorot_uniform", name="w1")
        self.b1 = self.add_weight(shape=(5,), initializer="random_normal", name="b1")
        self.w2 = self.add_weight(shape=(5, width), initializer="glorot_uniform", name="w2")

    def call(self, x):
        return (torch.tanh(x @ self.w1.value + self.b1.value) @ self.w2.value) + x


def _built(layer, width=6):
    layer.build((None, width))
    return layer


RECOGNIZED = {
    "residual_keras_ops": (lambda: ResidualDense(),
                           [ResidualStart, Linear, Activation, ResidualAdd]),
    "bias_first_sigmoid": (lambda: _Weighted(lambda s, x: ops.sigmoid(ops.add(s.bias, ops.matmul(x, s.kernel)))),
                           [Linear, Activation]),
    "no_activation": (lambda: _Weighted(lambda s, x: ops.matmul(x, s.kernel) + s.bias), [Linear]),
    "two_products": (lambda: TwoLayerBlock(), [ResidualStart, Linear, Activation, Linear, ResidualAdd]),
}


@pytest.mark.parametrize("name", sorted(RECOGNIZED))
def test_calls_of_products_sums_and_activations_read_as_static_layers(name):
    make, kinds = RECOGNIZED[name]
    layer = _built(make())
    described = traced_static_layers(layer, 6)
    assert [type(part) for part in described] == kinds
    weights = {id(v.value) for v in layer.trainable_variables}
    assert {id(p) for part in described if isinstance(part, Linear) for p in (part.weight, part.bias)
            if p is not None} == weights
    assert not layer.losses


DECLINED = {
    "another_op": lambda: _Weighted(lambda s, x: x + ops.square(ops.matmul(x, s.kernel) + s.bias)),
    "weight_used_twice": lambda: _Weighted(lambda s, x: ops.matmul(ops.matmul(x, s.kernel), s.kernel) + s.bias),
    "weight_left_unused": lambda: _Weighted(lambda s, x: ops.relu(ops.matmul(x, s.kernel))),
    "branch_on_data": lambda: _Weighted(
        lambda s, x: ops.relu(ops.matmul(x, s.kernel) + s.bias) if float(ops.mean(x)) > 0 else x),
    "a_constant_added": lambda: _Weighted(lambda s, x: ops.matmul(x, s.kernel) + s.bias + ops.ones_like(x)),
    "an_extra_weight_multiplies": lambda: _Weighted(
        lambda s, x: (ops.matmul(x, s.kernel) + s.bias) * s.scale, extra_weight=True),
    "add_loss": lambda: _Weighted(lambda s, x: (s.add_loss(1.0), ops.matmul(x, s.kernel) + s.bias)[1]),
    "call_fails": lambda: _Weighted(lambda s, x: ops.matmul(x, ops.zeros((3, 3))) + s.bias),
    "unseeded_random": lambda: _Weighted(lambda s, x: keras.random.dropout(ops.matmul(x, s.kernel) + s.bias, 0.5)),
}


@pytest.mark.parametrize("name", sorted(DECLINED))
def test_any_other_call_is_not_described(name):
    layer = _built(DECLINED[name]())
    torch.manual_seed(3)
    assert traced_static_layers(layer, 6) is None
    assert not layer.losses  # the probe's add_loss terms are not left behind
    assert torch.equal(torch.rand(4), torch.manual_seed(3) and torch.rand(4))  # nor a move of the global stream


class _SeededDropout(_Weighted):
    def __init__(self):
        super().__init__(lambda s, x: keras.random.dropout(ops.matmul(x, s.kernel) + s.bias, 0.5, seed=s.seeds))
        self.seeds = keras.random.SeedGenerator(5)


def test_a_layer_with_a_seed_generator_is_not_probed():
    layer = _built(_SeededDropout())
    state = layer.seeds.state.numpy().copy()
    assert traced_static_layers(layer, 6) is None
    np.testing.assert_array_equal(layer.seeds.state.numpy(), state)


def _residual_model(block=ResidualDense):
    model = keras.Sequential([keras.Input((12,)), layers.Dense(8, activation="relu"), block(), block(),
                              layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 12)).astype("float32")
    return x, (x @ rng.normal(size=(12, 3))).argmax(1)


@pytest.mark.parametrize("block", [ResidualDense, TwoLayerBlock])
def test_residual_layers_train_on_the_static_executor_as_keras_fits(block):
    x, y = _data()
    assert_static_and_equal(twin_fits(lambda: _residual_model(block), x, y, epochs=3, batch_size=16,
                                      validation_split=0.2))


def test_a_layer_the_trace_does_not_describe_trains_on_autograd_as_keras_fits():
    def squared(s, x):
        return x + ops.square(ops.matmul(x, s.kernel) + s.bias)

    x, y = _data()
    (ours, _), (reference, _) = twin_fits(lambda: _residual_model(lambda: _Weighted(squared)), x, y, epochs=2,
                                          batch_size=16)
    assert dict(ours.plan.reasons)["executor"].startswith("autograd (some layer has no backward the engine knows: "
                                                          "layer '__weighted")
    assert dict(ours.plan.reasons)["executor"].endswith("(_Weighted): torch.square is not a product, sum or activation)")
    assert max_difference(ours.get_weights(), reference.get_weights()) < 1e-5
