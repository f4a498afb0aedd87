"""A Sequential ending in an ``Activation("softmax")`` (or sigmoid) layer after its last Dense,
as the classic Keras MNIST MLP writes it, trains on its logits (the static executor where the
layers allow) equal to Keras's own fit, and predicts probabilities."""

import numpy as np
import pytest
from twins import assert_static_and_equal, max_difference, twin_fits

from hpctrain import keras

layers = keras.layers

CASES = {  # output units, activation, loss, labels
    "softmax": (3, "softmax", "sparse_categorical_crossentropy", lambda x, rng: (x @ rng.normal(size=(10, 3))).argmax(1)),
    "sigmoid": (1, "sigmoid", "binary_crossentropy",
                lambda x, rng: (x @ rng.normal(size=(10, 1)) > 0).astype("float32")),
}


def _model(case, dropout):
    units, activation, loss, _ = CASES[case]
    model = keras.Sequential([keras.Input((10,)), layers.Dense(16), layers.Activation("relu"),
                              *([layers.Dropout(0.3)] if dropout else []), layers.Dense(units),
                              layers.Activation(activation)])
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    return model


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_activation_layer_at_the_end_trains_static_on_the_logits_as_keras_fits(case):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(96, 10)).astype("float32")
    y = CASES[case][3](x, rng)
    twins = twin_fits(lambda: _model(case, False), x, y, epochs=3, batch_size=16, validation_split=0.25)
    assert_static_and_equal(twins)
    (ours, _), (reference, _) = twins
    probabilities = ours.predict(x, verbose=0)
    np.testing.assert_allclose(probabilities, reference.predict(x, verbose=0), atol=1e-5)
    if case == "softmax":
        np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)


def test_with_dropout_it_runs_the_native_forward_on_the_logits_as_keras_fits():
    """Dropout before the output: the engine's mask on both sides; the autograd path's forward
    (the model forced off the static executor) also stops before the activation."""
    import hpctrain

    rng = np.random.default_rng(4)
    x = rng.normal(size=(64, 10)).astype("float32")
    y = CASES["softmax"][3](x, rng)

    def build():
        model = _model("softmax", True)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", plan=hpctrain.make_plan(
            executor="autograd"))
        return model

    (ours, _), (reference, _) = twin_fits(build, x, y, epochs=2, batch_size=16, engine_mask=True)
    assert dict(ours.plan.reasons)["executor"].startswith("autograd")
    assert max_difference(ours.get_weights(), reference.get_weights()) < 1e-5
