import contextlib

import numpy as np
import torch
import hpctrain.keras as hk
from hpctrain import keras
from hpctrain.engine.dropout import dropout as engine_dropout


@contextlib.contextmanager
def keras_own_loop():
    """Keras's own fit/evaluate/predict for the reference run."""
    hk.use_engine(False)
    try:
        yield
    finally:
        hk.use_engine(True)


def max_difference(first, second) -> float:
    return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(first, second, strict=True))


def optimizer_values(model):
    return [v.numpy() for v in model.optimizer.variables]


def classification_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 12)).astype("float32")
    y = (x @ rng.normal(size=(12, 3))).argmax(1)
    return x, y


@contextlib.contextmanager
def engine_dropout_mask():
    """Keras's unseeded dropout (``F.dropout``) drawing the engine's mask, as the native forward
    does, so that a reference run drops the same values."""
    original = torch.nn.functional.dropout

    def same_mask(input, p=0.5, training=True, inplace=False):
        return engine_dropout(input, p) if training else input

    torch.nn.functional.dropout = same_mask
    try:
        yield
    finally:
        torch.nn.functional.dropout = original


def twin_fits(build, x, y, *, engine_mask=False, **fit_arguments):
    """The same model (same seed) fitted by hpctrain's engine and by Keras's own loop;
    ``engine_mask``: Keras's unseeded dropout in the reference draws the engine's mask."""
    keras.utils.set_random_seed(7)
    ours = build()
    ours_history = ours.fit(x, y, verbose=0, shuffle=False, **fit_arguments)
    keras.utils.set_random_seed(7)
    reference = build()
    with keras_own_loop(), engine_dropout_mask() if engine_mask else contextlib.nullcontext():
        reference_history = reference.fit(x, y, verbose=0, shuffle=False, **fit_arguments)
    return (ours, ours_history), (reference, reference_history)


def residual_dense_class():
    """The benchmarks' user-written residual layer, ``x + relu(x @ W + b)`` in ``keras.ops``."""

    class ResidualDense(keras.layers.Layer):
        def build(self, input_shape):
            width = input_shape[-1]
            self.kernel = self.add_weight(shape=(width, width), initializer="glorot_uniform", name="kernel")
            self.bias = self.add_weight(shape=(width,), initializer="zeros", name="bias")

        def call(self, inputs):
            return inputs + keras.ops.relu(keras.ops.matmul(inputs, self.kernel) + self.bias)

    return ResidualDense


STATIC = "static (every layer and the loss have a known backward)"


def assert_static_and_equal(twins):
    """``twin_fits``'s result: ours on the static executor, weights, optimizer state and history
    equal to Keras's own fit."""
    (ours, history), (reference, reference_history) = twins
    assert dict(ours.plan.reasons)["executor"] == STATIC
    assert max_difference(ours.get_weights(), reference.get_weights()) < 1e-5
    assert max_difference(optimizer_values(ours), optimizer_values(reference)) < 1e-5
    for key, values in reference_history.history.items():
        np.testing.assert_allclose(history.history[key], values, rtol=1e-5, atol=1e-6)
