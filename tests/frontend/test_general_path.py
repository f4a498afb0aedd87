"""Data read batch by batch (PyDataset, generators, tf.data-style Datasets, DataLoaders) and models
with their own train_step/test_step/compute_loss on the engine's loop, against Keras's own torch
fit from the same initial weights: weights, History, evaluate results, and the line saying the
engine ran."""

import numpy as np
import pytest
import torch
from twins import classification_data, keras_own_loop, max_difference, optimizer_values

from hpctrain import keras
from hpctrain.keras import routing
from hpctrain.tfcompat import data as tf_data

ENGINE_LINE = "hpctrain: fit runs on the engine"


@pytest.fixture
def classification():
    return classification_data()


def _mlp():
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _twins(build, make_data, capsys, evaluate_data=None, **fit_arguments):
    """The same model fitted on the engine (verbose, to read its path line) and by Keras's own loop,
    each on fresh data from ``make_data``; the evaluate results of both on ``evaluate_data``."""
    keras.utils.set_random_seed(7)
    ours, ours_data = build(), make_data()
    ours_history = ours.fit(ours_data, verbose=1, **fit_arguments)
    printed = capsys.readouterr().out
    keras.utils.set_random_seed(7)
    reference, reference_data = build(), make_data()
    with keras_own_loop():
        reference_history = reference.fit(reference_data, verbose=0, **fit_arguments)
    assert ENGINE_LINE in printed and "runs on Keras's own loop" not in printed
    assert max_difference(ours.get_weights(), reference.get_weights()) < 1e-5
    assert max_difference(optimizer_values(ours), optimizer_values(reference)) < 1e-5
    _assert_same_history(ours_history.history, reference_history.history)
    if evaluate_data is not None:
        ours_logs = ours.evaluate(evaluate_data(), verbose=0, return_dict=True)
        with keras_own_loop():
            reference_logs = reference.evaluate(evaluate_data(), verbose=0, return_dict=True)
        _assert_same_history(ours_logs, reference_logs)
    return (ours, ours_data), (reference, reference_data)


def _assert_same_history(ours: dict, reference: dict) -> None:
    assert sorted(ours) == sorted(reference)
    for key, values in reference.items():
        np.testing.assert_allclose(np.asarray(ours[key], dtype=float), np.asarray(values, dtype=float),
                                   rtol=1e-5, atol=1e-6, err_msg=key)


class _WeightedBatches(keras.utils.PyDataset):
    """(x, y, sample_weight) batches; counts Keras's on_epoch_end calls."""

    def __init__(self, x, y, batch_size=32):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size
        self.weights = np.linspace(0.2, 1.8, len(x)).astype("float32")
        self.epoch_ends = 0

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index):
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[rows], self.y[rows], self.weights[rows]

    def on_epoch_end(self):
        self.epoch_ends += 1


@pytest.mark.parametrize("shuffle", [False, True])
def test_py_dataset_with_sample_weights_and_shuffled_indices_equals_keras(classification, capsys, shuffle):
    x, y = classification
    (_, ours), (_, reference) = _twins(_mlp, lambda: _WeightedBatches(x, y), capsys, epochs=3, shuffle=shuffle,
                                       evaluate_data=lambda: _WeightedBatches(x, y, batch_size=40))
    assert ours.epoch_ends == reference.epoch_ends > 0


def test_endless_generator_with_steps_and_validation_steps_equals_keras(classification, capsys):
    x, y = classification

    def endless(rows=32):
        while True:
            for start in range(0, len(x), rows):
                yield x[start:start + rows], y[start:start + rows]

    _twins(_mlp, endless, capsys, epochs=3, steps_per_epoch=4, validation_data=(x[:40], y[:40]),
           validation_steps=1, validation_batch_size=16)


def test_generator_that_runs_out_ends_the_epoch_as_in_keras(classification, capsys):
    x, y = classification

    def once():
        for start in range(0, len(x), 20):
            yield x[start:start + 20], y[start:start + 20]

    (ours, _), _ = _twins(_mlp, once, capsys, epochs=1)
    assert int(ours.optimizer.iterations.numpy()) == 5


def test_tf_data_dataset_shuffled_and_batched_equals_keras(classification, capsys):
    x, y = classification

    def dataset():
        return tf_data.Dataset.from_tensor_slices((x, y)).shuffle(96, seed=3).batch(24)

    _twins(_mlp, dataset, capsys, epochs=2, validation_data=tf_data.Dataset.from_tensor_slices((x, y)).batch(50),
           evaluate_data=lambda: tf_data.Dataset.from_tensor_slices((x, y)).batch(30))


def test_torch_data_loaders_for_training_and_validation_equal_keras(classification, capsys):
    x, y = classification

    def loader(rows, shuffle=False):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.tensor(x), torch.tensor(y)),
                                           batch_size=rows, shuffle=shuffle)

    _twins(_mlp, lambda: loader(20, shuffle=True), capsys, epochs=2, validation_data=loader(64),
           evaluate_data=lambda: loader(25))


def test_evaluate_with_steps_on_a_py_dataset_equals_keras(classification):
    x, y = classification
    keras.utils.set_random_seed(7)
    ours = _mlp()
    keras.utils.set_random_seed(7)
    reference = _mlp()
    logs = ours.evaluate(_WeightedBatches(x, y), steps=2, verbose=0)
    with keras_own_loop():
        reference_logs = reference.evaluate(_WeightedBatches(x, y), steps=2, verbose=0)
    np.testing.assert_allclose(logs, reference_logs, rtol=1e-6)
    assert routing.why_keras_evaluates(ours, _WeightedBatches(x, y), None, 2, {}) is None


# ---- models with their own steps -------------------------------------------------------------


class _ClippedStep(keras.Model):
    """A Keras-style train_step: clipped gradients through ``self.optimizer.apply``, logs of its own
    (with a key that is no metric); a test_step of its own."""

    def __init__(self):
        super().__init__()
        self.hidden, self.out = keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)
        self.tracker = keras.metrics.Mean(name="loss")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="acc")

    def call(self, x):
        return self.out(self.hidden(x))

    @property
    def metrics(self):
        return [self.tracker, self.accuracy]

    def train_step(self, data):
        x, y = data
        self.zero_grad()
        prediction = self(x, training=True)
        loss = self.compute_loss(x=x, y=y, y_pred=prediction)
        loss.backward()
        gradients = [torch.clamp(v.value.grad, -0.01, 0.01) for v in self.trainable_weights]
        with torch.no_grad():
            self.optimizer.apply(gradients, self.trainable_weights)
        self.tracker.update_state(loss)
        self.accuracy.update_state(y, prediction)
        return {"loss": self.tracker.result(), "acc": self.accuracy.result(), "steps_seen": self.optimizer.iterations}

    def test_step(self, data):
        x, y = data
        prediction = self(x, training=False)
        self.tracker.update_state(self.compute_loss(x=x, y=y, y_pred=prediction))
        self.accuracy.update_state(y, prediction)
        return {"loss": self.tracker.result(), "acc": self.accuracy.result()}


def _clipped():
    model = _ClippedStep()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


class _BatchLogs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append((batch, round(float(logs["loss"]), 5), float(logs["steps_seen"])))


def test_own_train_and_test_step_on_arrays_equal_keras(classification, capsys):
    x, y = classification
    keras.utils.set_random_seed(7)
    ours, watcher = _clipped(), _BatchLogs()
    history = ours.fit(x, y, epochs=2, batch_size=16, shuffle=False, validation_data=(x[:30], y[:30]), verbose=1,
                       callbacks=[watcher])
    printed = capsys.readouterr().out
    keras.utils.set_random_seed(7)
    reference, reference_watcher = _clipped(), _BatchLogs()
    with keras_own_loop():
        reference_history = reference.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0,
                                          validation_data=(x[:30], y[:30]), callbacks=[reference_watcher])
    assert "fit runs on the engine: Keras's own step functions in the engine's loop (the model defines its own " \
           "train_step, test_step)" in printed
    assert max_difference(ours.get_weights(), reference.get_weights()) < 1e-5
    _assert_same_history(history.history, reference_history.history)
    assert sorted(history.history) == ["acc", "loss", "steps_seen", "val_acc", "val_loss"]
    assert watcher.seen == reference_watcher.seen and len(watcher.seen) == 12
    ours_logs = ours.evaluate(x, y, batch_size=10, verbose=0)
    with keras_own_loop():
        reference_logs = reference.evaluate(x, y, batch_size=10, verbose=0)
    np.testing.assert_allclose(ours_logs, reference_logs, rtol=1e-6)


def test_own_train_step_on_a_py_dataset_equals_keras(classification, capsys):
    x, y = classification

    class Unweighted(_WeightedBatches):
        def __getitem__(self, index):
            return super().__getitem__(index)[:2]

    _twins(_clipped, lambda: Unweighted(x, y), capsys, epochs=2, shuffle=True)


class _SquaredOnTop(keras.Sequential):
    """Keras's own train_step, with a compute_loss of its own (a penalty on the outputs' size)."""

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x, y, y_pred, sample_weight, training)
        return loss + 0.1 * keras.ops.mean(keras.ops.square(y_pred))


def test_own_compute_loss_is_honored_as_in_keras(classification, capsys):
    x, y = classification

    def build():
        model = _SquaredOnTop([keras.Input((12,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
        model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        return model

    def weighted_arrays():
        return _WeightedBatches(x, y, batch_size=24)

    _twins(build, weighted_arrays, capsys, epochs=2, evaluate_data=weighted_arrays)


def test_routing_sends_batch_data_and_own_steps_to_the_engine(classification):
    x, y = classification
    model = _clipped()
    assert routing.why_keras_fits(model, x, y, None) is None and routing.reads_batches(model, x)
    assert routing.why_keras_fits(_mlp(), _WeightedBatches(x, y), None, None) is None
    assert routing.why_keras_fits(_mlp(), _WeightedBatches(x, y), y, None) == (
        "y is given beside a _WeightedBatches, which holds the targets (Keras says so)")


# ---- one batch at a time -----------------------------------------------------------------------


def test_train_test_and_predict_on_batch_equal_keras(classification):
    x, y = classification
    weights = np.linspace(0.5, 1.5, len(x)).astype("float32")
    keras.utils.set_random_seed(7)
    ours = _mlp()
    keras.utils.set_random_seed(7)
    reference = _mlp()
    for start in range(0, len(x), 32):
        rows = slice(start, start + 32)
        logs = ours.train_on_batch(x[rows], y[rows], sample_weight=weights[rows])
        with keras_own_loop():
            reference_logs = reference.train_on_batch(x[rows], y[rows], sample_weight=weights[rows])
        np.testing.assert_allclose(logs, reference_logs, rtol=1e-5)
    assert ours.train_on_batch(x[:8], y[:8], return_dict=True).keys() == {"loss", "accuracy"}
    with keras_own_loop():
        reference.train_on_batch(x[:8], y[:8], return_dict=True)
    assert max_difference(ours.get_weights(), reference.get_weights()) < 1e-5
    assert max_difference(optimizer_values(ours), optimizer_values(reference)) < 1e-5
    assert int(ours.optimizer.iterations.numpy()) == 4
    test_logs = ours.test_on_batch(x[:40], y[:40], return_dict=True)
    with keras_own_loop():
        reference_test_logs = reference.test_on_batch(x[:40], y[:40], return_dict=True)
    _assert_same_history(test_logs, reference_test_logs)
    _assert_same_history(ours.get_metrics_result(), reference.get_metrics_result())
    with keras_own_loop():
        reference_predictions = reference.predict_on_batch(x[:10])
    np.testing.assert_allclose(ours.predict_on_batch(x[:10]), reference_predictions, atol=1e-6)
    assert routing.why_keras_trains_on_batch(ours, x[:4], y[:4], None, None) is None
    assert routing.why_keras_tests_on_batch(ours, x[:4], y[:4]) is None


# ---- several inputs and outputs: Keras's own steps in the engine's loop ------------------------


def _two_in_two_out():
    first, second = keras.Input((12,), name="first"), keras.Input((4,), name="second")
    hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Concatenate()([first, second]))
    classes = keras.layers.Dense(3, activation="softmax", name="classes")(hidden)
    value = keras.layers.Dense(1, name="value")(hidden)
    model = keras.Model({"first": first, "second": second}, {"classes": classes, "value": value})
    model.compile(optimizer="adam", loss={"classes": "sparse_categorical_crossentropy", "value": "mse"},
                  loss_weights={"classes": 1.0, "value": 0.5}, metrics={"classes": ["accuracy"]},
                  weighted_metrics={"value": ["mae"]})
    return model


def test_several_inputs_and_outputs_with_per_output_losses_equal_keras(classification, capsys):
    x, y = classification
    extra = np.random.default_rng(5).normal(size=(len(x), 4)).astype("float32")
    inputs, targets = {"first": x, "second": extra}, {"classes": y, "value": extra[:, :1] * 2.0}
    weights = {"classes": np.ones(len(x), "float32"), "value": np.linspace(0.5, 1.5, len(x)).astype("float32")}
    keras.utils.set_random_seed(7)
    ours = _two_in_two_out()
    history = ours.fit(inputs, targets, sample_weight=weights, epochs=2, batch_size=16, validation_split=0.25,
                       shuffle=False, verbose=1)
    printed = capsys.readouterr().out
    keras.utils.set_random_seed(7)
    reference = _two_in_two_out()
    with keras_own_loop():
        reference_history = reference.fit(inputs, targets, sample_weight=weights, epochs=2, batch_size=16,
                                          validation_split=0.25, shuffle=False, verbose=0)
    assert ("fit runs on the engine: Keras's own step functions in the engine's loop (the model has several "
            "inputs or outputs)") in printed
    assert max_difference(ours.get_weights(), reference.get_weights()) < 1e-5
    _assert_same_history(history.history, reference_history.history)
    logs = ours.evaluate(inputs, targets, verbose=0, return_dict=True)
    with keras_own_loop():
        reference_logs = reference.evaluate(inputs, targets, verbose=0, return_dict=True)
    _assert_same_history(logs, reference_logs)


def test_options_the_general_path_cannot_honour_are_refused(classification):
    x, y = classification
    with pytest.raises(TypeError, match=r"on_nonfinite='skip_step' skips the engine's update, but this model's fit "
                                        r"runs Keras's own steps \(the model defines its own train_step, test_step\)"):
        _clipped().fit(x, y, verbose=0, on_nonfinite="skip_step")
    with pytest.raises(TypeError, match="checkpoint= resumes mid-epoch, which needs arrays"):
        _mlp().fit(_WeightedBatches(x, y), verbose=0, checkpoint=object())
