"""The native forward (Keras layers run as torch ops on their own variables) against Keras's own
torch fit: the same weights, optimizer variables, losses and predictions from the same start."""

import numpy as np
import pytest
import torch

from hpctrain import keras
from hpctrain.engine import native
from hpctrain.keras import native_forward as nf
from hpctrain.keras.module import KerasModule
from twins import keras_own_loop, max_difference, optimizer_values, residual_dense_class, twin_fits

layers = keras.layers


def _images(shape, classes=10, rows=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, *shape)).astype("float32")
    y = (x.reshape(rows, -1) @ rng.normal(size=(x[0].size, classes))).argmax(1)
    return x, y


def _compiled(make_layers, loss="sparse_categorical_crossentropy", **compile_arguments):
    def build():
        model = keras.Sequential(make_layers())
        model.compile(optimizer="adam", loss=loss, metrics=["accuracy"], **compile_arguments)
        return model
    return build


def _convnet(dropout):
    return lambda: [layers.Input((28, 28, 1)), layers.Conv2D(8, (3, 3), activation="relu"),
                    layers.MaxPooling2D(pool_size=(2, 2)), layers.Conv2D(16, (3, 3), activation="relu"),
                    layers.MaxPooling2D(pool_size=(2, 2)), layers.Flatten(),
                    *([layers.Dropout(0.5)] if dropout else []), layers.Dense(10, activation="softmax")]


def _block_with_inner_dropout_class():
    class Block(layers.Layer):  # its call takes no training argument: the inner Dropout reads the context
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = layers.Dense(16, activation="relu")
            self.dropout = layers.Dropout(0.3)

        def call(self, inputs):
            return self.dropout(self.dense(inputs))

    return Block


def _strided_same():
    return [layers.Input((13, 13, 3)), layers.Conv2D(8, 4, strides=2, padding="same"), layers.ReLU(),
            layers.AveragePooling2D(3, strides=2, padding="same"),
            layers.Conv2D(6, 3, padding="same", dilation_rate=2, groups=2, activation="tanh", use_bias=False),
            layers.MaxPooling2D(2, padding="same"), layers.GlobalMaxPooling2D(keepdims=True),
            layers.Reshape((6,)), layers.Dense(5, activation="softmax")]


def _conv1d():
    return [layers.Input((20, 5)), layers.Conv1D(8, 3, activation="relu", padding="same"), layers.MaxPooling1D(2),
            layers.Conv1D(6, 2, strides=2), layers.Activation("relu"), layers.GlobalAveragePooling1D(),
            layers.Dense(3, activation="softmax")]


CASES = {
    "convnet": (_compiled(_convnet(dropout=False)), (28, 28, 1), 10),
    "convnet-dropout-categorical": (_compiled(_convnet(dropout=True), loss="categorical_crossentropy"), (28, 28, 1), 10),
    "strided-same-padding": (_compiled(_strided_same), (13, 13, 3), 5),
    "conv1d-global-average": (_compiled(_conv1d), (20, 5), 3),
    "custom-residual-layers": (_compiled(lambda: [layers.Input((24,)), layers.Dense(16, activation="relu"),
                                                  residual_dense_class()(), residual_dense_class()(),
                                                  layers.Dense(4, activation="softmax")]), (24,), 4),
    "custom-layer-with-inner-dropout": (_compiled(lambda: [layers.Input((24,)), _block_with_inner_dropout_class()(),
                                                           layers.Dense(4, activation="softmax")]), (24,), 4),
    "tf-beginner-flatten": (_compiled(lambda: [layers.Flatten(input_shape=(28, 28)), layers.Dense(32, activation="relu"),
                                               layers.Dropout(0.2), layers.Dense(10)],
                                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                                      run_eagerly=True),  # on autograd, with the native forward
                            (28, 28), 10),
}
# Models whose unseeded Dropout the native forward runs with the engine's mask: the reference
# fit (Keras's own) draws that mask too.
ENGINE_MASK_CASES = {"convnet-dropout-categorical", "tf-beginner-flatten"}


@pytest.mark.parametrize("case", list(CASES))
def test_fit_and_predict_equal_keras(case):
    build, shape, classes = CASES[case]
    x, y = _images(shape, classes)
    if "categorical" in case:
        y = np.eye(classes, dtype="float32")[y]
    assert nf.native_forward(build()) is not None
    (ours, history), (reference, reference_history) = twin_fits(
        build, x, y, epochs=2, batch_size=16, engine_mask=case in ENGINE_MASK_CASES)
    assert max_difference(ours.get_weights(), reference.get_weights()) < 1e-5
    assert max_difference(optimizer_values(ours), optimizer_values(reference)) < 1e-5
    np.testing.assert_allclose(history.history["loss"], reference_history.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(history.history["accuracy"], reference_history.history["accuracy"], rtol=1e-5)
    predictions = ours.predict(x, verbose=0)
    with keras_own_loop():
        keras_predictions = ours.predict(x, verbose=0)  # Keras's predict, the same weights
        reference_predictions = reference.predict(x, verbose=0)
    np.testing.assert_allclose(predictions, keras_predictions, atol=1e-6)
    np.testing.assert_allclose(predictions, reference_predictions, atol=1e-4)  # weights within 1e-5
    with keras_own_loop():
        keras_evaluation = ours.evaluate(x, y, verbose=0)
    np.testing.assert_allclose(ours.evaluate(x, y, verbose=0), keras_evaluation, rtol=1e-5)


def test_known_layers_run_natively_and_others_through_keras():
    model = _compiled(_convnet(dropout=True))()
    steps = nf.native_forward(model).steps
    assert [type(step).__name__ for step in steps] == [
        "Convolution", "Pooling", "Convolution", "Pooling", "Reshape", "Dropout", "Dense"]
    assert steps[0].activation is None and steps[1].relu  # ReLU moved after the pooling, into it
    if native.kernels() is not None:  # the session built the native library where it can
        assert steps[1].kernels is not None and steps[3].kernels is not None  # 2x2 pooling on its kernels


def _penalized_leaf_class():
    class PenalizedScale(layers.Layer):  # add_loss in call, and a training argument
        def build(self, input_shape):
            self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")

        def call(self, inputs, training=None):
            self.add_loss(1e-2 * keras.ops.sum(keras.ops.square(self.scale)))
            return inputs * self.scale if training else inputs * self.scale * 1.0

    return PenalizedScale


def _masked_leaf_class():
    class TakesMask(layers.Layer):
        def call(self, inputs, mask=None):
            return inputs * 2.0

    return TakesMask


def test_user_leaf_layers_are_called_at_their_call_and_keep_their_add_loss():
    PenalizedScale, TakesMask, ResidualDense = _penalized_leaf_class(), _masked_leaf_class(), residual_dense_class()
    build = _compiled(lambda: [layers.Input((24,)), layers.Dense(16, activation="relu"), PenalizedScale(),
                               ResidualDense(), TakesMask(), _block_with_inner_dropout_class()(),
                               layers.Dense(4, activation="softmax")])
    kinds = [type(step).__name__ for step in nf.native_forward(build()).steps]
    # A mask argument or sublayers (the block's Dropout reads the call context) keep Keras's __call__.
    assert kinds == ["Dense", "DirectCall", "DirectCall", "KerasCall", "KerasCall", "Dense"]
    x, y = _images((24,), 4)
    (ours, history), (reference, reference_history) = twin_fits(build, x, y, epochs=2, batch_size=16)
    assert max_difference(ours.get_weights(), reference.get_weights()) < 1e-5
    # The add_loss term counts once per step, as under Keras's __call__, not once per step so far.
    np.testing.assert_allclose(history.history["loss"], reference_history.history["loss"], rtol=1e-5)
    assert len(ours.losses) == 1


def test_a_direct_call_given_another_dtype_goes_through_keras_call():
    layer = residual_dense_class()()
    model = keras.Sequential([layers.Input((6,)), layers.Dense(6), layer])
    step = nf.native_forward(model).steps[1]
    assert isinstance(step, nf.DirectCall)
    x = torch.randn(3, 6, dtype=torch.float64)
    assert step(x, training=False).dtype == torch.float32  # Keras's __call__ converted the input


def test_seeded_dropout_keeps_keras_call_and_stream():
    build = _compiled(lambda: [layers.Input((24,)), layers.Dense(16, activation="relu"), layers.Dropout(0.4, seed=3),
                               layers.Dense(4, activation="softmax")])
    steps = nf.native_forward(build()).steps
    assert [type(step).__name__ for step in steps] == ["Dense", "KerasCall", "Dense"]
    x, y = _images((24,), 4)
    (ours, _), (reference, _) = twin_fits(build, x, y, epochs=2, batch_size=16)
    assert "static" not in ours._hpctrain_session.plan.executor  # nor does the static step draw it
    assert max_difference(ours.get_weights(), reference.get_weights()) < 1e-5


def test_engine_mask_keeps_each_value_with_probability_one_minus_rate():
    model = keras.Sequential([layers.Input((4000,)), layers.Dropout(0.3), layers.Dense(1)])
    step = nf.native_forward(model).steps[0]
    x = torch.ones(50, 4000)
    dropped = step(x, training=True)
    kept = dropped != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005  # 200,000 draws: 5 standard deviations is 0.005
    assert torch.allclose(dropped[kept], torch.tensor(1 / 0.7))
    assert step(x, training=False) is x


@pytest.mark.parametrize("training", [False, True])
def test_forward_equals_the_keras_call_bit_for_bit(training):
    model = keras.Sequential(_strided_same())
    module = KerasModule(model).train(training)
    x = torch.randn(8, 13, 13, 3)
    assert torch.equal(module(x), model(x, training=training))


def test_batch_normalization_frozen_and_nested_layers_between_native_ones_equal_keras():
    def make_layers():
        frozen = layers.Conv2D(4, 3, padding="same", use_bias=False)
        frozen.trainable = False
        nested = keras.Sequential([layers.Dense(12, activation="relu"), layers.Dropout(0.25)])
        return [layers.Input((12, 12, 2)), frozen, layers.BatchNormalization(), layers.Activation("relu"),
                layers.Conv2D(6, 3, strides=2), layers.AveragePooling2D(2), layers.Flatten(), nested,
                layers.Dense(3, activation="softmax")]

    build = _compiled(make_layers)
    kinds = [type(step).__name__ for step in nf.native_forward(build()).steps]
    assert kinds == ["Convolution", "KerasCall", "Elementwise", "Convolution", "Pooling", "Reshape", "KerasCall", "Dense"]
    x, y = _images((12, 12, 2), 3)
    (ours, history), (reference, reference_history) = twin_fits(build, x, y, epochs=2, batch_size=16)
    assert max_difference(ours.get_weights(), reference.get_weights()) < 1e-5  # moving statistics included
    assert max_difference(optimizer_values(ours), optimizer_values(reference)) < 1e-5
    np.testing.assert_allclose(history.history["loss"], reference_history.history["loss"], rtol=1e-5)


def test_folded_softmax_on_the_autograd_path_equals_keras():
    # run_eagerly puts a Dense stack on autograd with the softmax folded into the loss (logits=True).
    build = _compiled(lambda: [layers.Input((12,)), layers.Dense(16, activation="relu"),
                               layers.Dense(3, activation="softmax")], run_eagerly=True)
    x, y = _images((12,), 3, rows=96)
    assert nf.native_forward(build(), logits=True) is not None
    (ours, history), (reference, reference_history) = twin_fits(build, x, y, epochs=2, batch_size=32)
    assert "autograd" in ours._hpctrain_session.plan.executor
    assert max_difference(ours.get_weights(), reference.get_weights()) < 1e-5
    np.testing.assert_allclose(history.history["loss"], reference_history.history["loss"], rtol=1e-5)


def test_activity_regularized_layer_keeps_keras_call_and_its_loss():
    build = _compiled(lambda: [layers.Input((10, 10, 1)), layers.Conv2D(4, 3, activation="relu"), layers.Flatten(),
                               layers.Dense(8, activation="relu", activity_regularizer=keras.regularizers.L2(1e-2)),
                               layers.Dense(3, activation="softmax")])
    model = build()
    assert type(nf.native_forward(model).steps[2]).__name__ == "KerasCall"
    x, y = _images((10, 10, 1), 3)
    (ours, history), (reference, reference_history) = twin_fits(build, x, y, epochs=2, batch_size=16)
    assert max_difference(ours.get_weights(), reference.get_weights()) < 1e-5
    np.testing.assert_allclose(history.history["loss"], reference_history.history["loss"], rtol=1e-5)


def test_models_that_make_masks_or_take_other_inputs_keep_keras_call():
    masked = keras.Sequential([layers.Input((6,)), layers.Embedding(10, 4, mask_zero=True),
                               layers.GlobalAveragePooling1D(), layers.Dense(2)])
    assert nf.native_forward(masked) is None
    plain = keras.Sequential([layers.Input((6, 4)), layers.GlobalAveragePooling1D(), layers.Dense(2)])
    native = nf.native_forward(plain)
    assert native.takes(torch.zeros(3, 6, 4))
    assert not native.takes(torch.zeros(3, 6, 4, dtype=torch.float64))
    assert not native.takes(torch.zeros(3, 7, 4))  # Keras's call reports the wrong shape itself


def test_regression_with_the_engine_mse_kernel_equals_keras():
    def build():
        model = keras.Sequential([layers.Input((20, 5)), layers.Conv1D(6, 3, activation="relu"),
                                  layers.GlobalMaxPooling1D(), layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
        return model

    x, _ = _images((20, 5))
    y = x[:, :, 0].sum(axis=1, keepdims=True)
    (ours, history), (reference, reference_history) = twin_fits(build, x, y, epochs=2, batch_size=16)
    assert max_difference(ours.get_weights(), reference.get_weights()) < 1e-5
    for key in ("loss", "mae"):
        np.testing.assert_allclose(history.history[key], reference_history.history[key], rtol=1e-5)
