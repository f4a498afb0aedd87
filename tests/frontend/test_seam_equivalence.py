"""hpctrain's fit of real Keras models against Keras's own torch fit: same weights, optimizer
variables, History and metrics from the same initial weights and data order."""

import numpy as np
import pytest

from hpctrain import keras
from twins import classification_data, keras_own_loop, max_difference, optimizer_values, twin_fits


@pytest.fixture
def classification():
    return classification_data()


def _mlp(optimizer, loss="sparse_categorical_crossentropy", metrics=("accuracy",), regularizer=None,
         last_activation="softmax"):
    def build():
        model = keras.Sequential([keras.Input((12,)),
                                  keras.layers.Dense(16, activation="relu", kernel_regularizer=regularizer),
                                  keras.layers.Dense(3, activation=last_activation)])
        model.compile(optimizer=keras.optimizers.get(optimizer) if isinstance(optimizer, str) else optimizer(),
                      loss=loss, metrics=list(metrics))
        return model
    return build


@pytest.mark.parametrize("optimizer", [
    "adam", "sgd", "rmsprop",
    lambda: keras.optimizers.SGD(learning_rate=0.05, momentum=0.9, nesterov=True),
    lambda: keras.optimizers.AdamW(learning_rate=3e-3, weight_decay=0.01),
    lambda: keras.optimizers.Adam(learning_rate=keras.optimizers.schedules.ExponentialDecay(1e-2, 3, 0.5)),
], ids=["adam", "sgd", "rmsprop", "sgd-nesterov", "adamw", "adam-schedule"])
def test_weights_and_optimizer_state_equal_keras(classification, optimizer):
    x, y = classification
    (ours, history), (reference, reference_history) = twin_fits(_mlp(optimizer), x, y, epochs=2, batch_size=32)
    assert max_difference(ours.get_weights(), reference.get_weights()) < 1e-5
    assert max_difference(optimizer_values(ours), optimizer_values(reference)) < 1e-5
    assert int(ours.optimizer.iterations.numpy()) == 6
    assert sorted(history.history) == sorted(reference_history.history)
    for key, values in reference_history.history.items():
        np.testing.assert_allclose(history.history[key], values, rtol=1e-5, atol=1e-6)


def test_l1_l2_regularized_loss_and_weights_equal_keras(classification):
    x, y = classification
    build = _mlp("adam", regularizer=keras.regularizers.L1L2(l1=1e-3, l2=1e-2))
    (ours, history), (reference, reference_history) = twin_fits(build, x, y, epochs=2, batch_size=16)
    assert max_difference(ours.get_weights(), reference.get_weights()) < 1e-5
    np.testing.assert_allclose(history.history["loss"], reference_history.history["loss"], rtol=1e-5)


def test_batch_normalization_model_on_the_autograd_path_equals_keras(classification):
    x, y = classification

    def build():
        model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, use_bias=False), keras.layers.BatchNormalization(),
                                  keras.layers.Activation("relu"), keras.layers.Dense(3, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    (ours, history), (reference, _) = twin_fits(build, x, y, epochs=2, batch_size=32)
    # Moving mean and variance (non-trainable) included: get_weights lists every variable.
    assert max_difference(ours.get_weights(), reference.get_weights()) < 1e-5
    assert "autograd" in ours._hpctrain_session.plan.executor


def test_custom_loss_function_and_keras_metric_objects_report_what_keras_reports(classification):
    x, y = classification

    def smoothed(y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred) * 0.5

    build = _mlp("adam", loss=smoothed, metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc"),
                                                 keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="top2")])
    (ours, history), (reference, reference_history) = twin_fits(build, x, y, epochs=2, batch_size=32)
    assert max_difference(ours.get_weights(), reference.get_weights()) < 1e-5
    assert sorted(history.history) == ["acc", "loss", "top2"]
    for key in ("loss", "acc", "top2"):
        np.testing.assert_allclose(history.history[key], reference_history.history[key], rtol=1e-5)


def test_evaluate_and_predict_return_what_keras_returns(classification):
    x, y = classification
    (ours, _), (reference, _) = twin_fits(_mlp("adam"), x, y, epochs=1, batch_size=32)
    ours_eval = ours.evaluate(x, y, verbose=0)
    with keras_own_loop():
        reference_eval = reference.evaluate(x, y, verbose=0)
        reference_dict = reference.evaluate(x, y, verbose=0, return_dict=True)
        reference_predictions = reference.predict(x, verbose=0)
    assert isinstance(ours_eval, list) and len(ours_eval) == 2
    np.testing.assert_allclose(ours_eval, reference_eval, rtol=1e-5)
    ours_dict = ours.evaluate(x, y, verbose=0, return_dict=True)
    assert sorted(ours_dict) == sorted(reference_dict)
    predictions = ours.predict(x, verbose=0)
    assert isinstance(predictions, np.ndarray) and predictions.dtype == np.float32
    np.testing.assert_allclose(predictions, reference_predictions, atol=1e-6)


def test_sample_and_class_weights_train_as_keras(classification):
    x, y = classification
    weights = np.linspace(0.5, 2.0, len(x)).astype("float32")
    (ours, _), (reference, _) = twin_fits(_mlp("sgd"), x, y, epochs=2, batch_size=32, sample_weight=weights)
    assert max_difference(ours.get_weights(), reference.get_weights()) < 1e-5
    (ours, _), (reference, _) = twin_fits(_mlp("sgd"), x, y, epochs=2, batch_size=32,
                                          class_weight={0: 1.0, 1: 3.0, 2: 0.5})
    assert max_difference(ours.get_weights(), reference.get_weights()) < 1e-5


def test_validation_data_logs_val_keys_as_keras(classification):
    x, y = classification
    (ours, history), (reference, reference_history) = twin_fits(_mlp("adam"), x, y, epochs=2, batch_size=32,
                                                                 validation_data=(x[:40], y[:40]))
    assert sorted(history.history) == sorted(reference_history.history)
    np.testing.assert_allclose(history.history["val_loss"], reference_history.history["val_loss"], rtol=1e-5)


def test_the_cpp_step_loop_runs_keras_adam_exactly():
    from hpctrain.engine import native

    if native.step_loop() is None:
        pytest.skip(f"the C++ step loop is not available here: {native.status()}")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(960, 12)).astype("float32")
    y = (x @ rng.normal(size=(12, 3))).argmax(1)
    (ours, history), (reference, reference_history) = twin_fits(_mlp("adam"), x, y, epochs=2, batch_size=32)
    assert dict(ours.plan.reasons)["step_loop"].startswith("C++")
    assert max_difference(ours.get_weights(), reference.get_weights()) < 1e-5
    assert max_difference(optimizer_values(ours), optimizer_values(reference)) < 1e-5
    np.testing.assert_allclose(history.history["loss"], reference_history.history["loss"], rtol=1e-5)


def test_keras_metric_objects_hold_what_keras_fit_and_evaluate_leave(classification):
    x, y = classification
    (ours, _), (reference, _) = twin_fits(_mlp("adam"), x, y, epochs=2, batch_size=32,
                                          validation_data=(x[:40], y[:40]))
    ours_results = {k: float(v) for k, v in ours.get_metrics_result().items()}
    reference_results = {k: float(v) for k, v in reference.get_metrics_result().items()}
    assert sorted(ours_results) == sorted(reference_results) == ["accuracy", "loss"]
    for name, value in reference_results.items():
        assert ours_results[name] == pytest.approx(value, rel=1e-5)
    ours.evaluate(x, y, verbose=0)
    with keras_own_loop():
        reference.evaluate(x, y, verbose=0)
    for name, value in reference.get_metrics_result().items():
        assert float(ours.get_metrics_result()[name]) == pytest.approx(float(value), rel=1e-5)
