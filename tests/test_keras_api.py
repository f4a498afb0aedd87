"""The Keras surface: import paths, layers' math, losses, metrics, callbacks, weights, summary."""

import io
import os

import numpy as np
import pytest
import torch

import hpctrain as tf
from conftest import small_classification
from hpctrain.engine import metrics as engine_metrics
from hpctrain.keras import activations, losses
from hpctrain.keras.callbacks import Callback, EarlyStopping, History
from hpctrain.keras.layers import Activation, Dense, Dropout, Flatten, Input
from hpctrain.keras.models import Sequential
from hpctrain.keras.optimizers import SGD, Adam


def test_keras_import_paths():
    assert tf.keras.models.Sequential is Sequential
    assert tf.keras.layers.Dense is Dense
    assert tf.keras.optimizers.Adam is Adam
    assert tf.keras.Input is Input
    from hpctrain.keras.utils import set_random_seed, to_categorical  # noqa: F401


def test_dense_is_x_at_kernel_plus_bias_with_kernel_shaped_in_out(rng):
    layer_model = Sequential([Dense(3, activation="tanh", input_shape=(4,))])
    kernel, bias = layer_model.get_weights()
    assert kernel.shape == (4, 3) and bias.shape == (3,)
    assert np.all(bias == 0)  # Keras default: zero biases
    limit = np.sqrt(6 / (4 + 3))  # glorot-uniform bound
    assert np.all(np.abs(kernel) <= limit)
    x = rng.random((5, 4)).astype("float32")
    np.testing.assert_allclose(layer_model.predict(x, verbose=0), np.tanh(x @ kernel + bias), rtol=1e-6)


def test_glorot_uniform_has_the_keras_variance():
    kernel = Sequential([Dense(400, input_dim=600)]).get_weights()[0]
    assert np.var(kernel) == pytest.approx(2 / (600 + 400), rel=0.03)


REFERENCE_ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "tanh": np.tanh,
    "softmax": lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True),
    "linear": lambda x: x,
    "elu": lambda x: np.where(x > 0, x, np.exp(x) - 1),
    "selu": lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * (np.exp(x) - 1)),
    "softplus": lambda x: np.log1p(np.exp(x)),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.2 * x),
    "gelu": lambda x: 0.5 * x * (1 + np.vectorize(__import__("math").erf)(x / np.sqrt(2))),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_ACTIVATIONS))
def test_activations_by_name_match_their_formulas(name, rng):
    x = rng.normal(size=(4, 5)).astype("float32")
    got = activations.get(name)(torch.tensor(x)).numpy()
    np.testing.assert_allclose(got, REFERENCE_ACTIVATIONS[name](x.astype("float64")), rtol=1e-5, atol=1e-6)


def test_sequential_built_with_add_equals_constructor_list():
    tf.keras.utils.set_random_seed(7)
    a = Sequential([Input(shape=(4,)), Dense(3, activation="relu"), Dense(2)])
    tf.keras.utils.set_random_seed(7)
    b = Sequential()
    b.add(Dense(3, activation="relu", input_dim=4))
    b.add(Dense(2))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert [layer.name.split("_")[0] for layer in a.layers] == ["dense", "dense"]


def test_lazy_build_on_first_fit(rng):
    x, y = small_classification(rng)
    model = Sequential([Dense(5, activation="relu"), Dropout(0.5), Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    assert [w.shape for w in model.get_weights()] == [(6, 5), (5,), (5, 3), (3,)]


def test_flatten_and_activation_layers(rng):
    x = rng.random((3, 2, 4)).astype("float32")
    model = Sequential([Flatten(input_shape=(2, 4)), Dense(2), Activation("softmax")])
    kernel, bias = model.get_weights()
    logits = x.reshape(3, 8) @ kernel + bias
    np.testing.assert_allclose(model.predict(x, verbose=0), REFERENCE_ACTIVATIONS["softmax"](logits), rtol=1e-5)


def test_dropout_is_active_in_training_only(rng):
    model = Sequential([Dropout(0.5, input_shape=(1000,))])
    x = np.ones((1, 1000), dtype="float32")
    np.testing.assert_array_equal(model.predict(x, verbose=0), x)
    model.train()
    out = model(torch.tensor(x)).detach().numpy()
    assert set(np.unique(out)) == {0.0, 2.0}  # inverted dropout keeps the expected value
    assert 0.4 < (out == 0).mean() < 0.6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_keeps_each_value_with_probability_one_minus_the_rate(dtype):
    from hpctrain.engine.dropout import scaled_keep_mask

    torch.manual_seed(0)
    mask = scaled_keep_mask(torch.empty(200_000, dtype=dtype), 0.3)
    kept = mask != 0
    assert mask.dtype == dtype
    assert abs(kept.float().mean().item() - 0.7) < 0.005  # 200,000 draws: one standard deviation is 0.001
    assert torch.equal(mask[kept], torch.full((int(kept.sum()),), 1 / 0.7, dtype=dtype))


def test_calling_the_model_on_numpy_returns_numpy_able_values(rng):
    model = Sequential([Dense(2, activation="softmax", input_dim=3)])
    x = rng.random((4, 3)).astype("float32")
    out = model(x)
    assert isinstance(out.numpy(), np.ndarray) and out.shape == (4, 2)
    np.testing.assert_allclose(out.numpy(), model.predict(x, verbose=0), rtol=1e-6)


def test_summary_matches_keras_table():
    model = Sequential([Dense(32, input_dim=784, activation="relu", name="dense"),
                        Dense(10, activation="softmax", name="dense_1")], name="sequential")
    out = io.StringIO()
    model.summary(print_fn=lambda text: out.write(text))
    text = out.getvalue()
    assert 'Model: "sequential"' in text
    assert "│ dense (Dense)                   │ (None, 32)             │        25,120 │" in text
    assert "│ dense_1 (Dense)                 │ (None, 10)             │           330 │" in text
    assert " Total params: 25,450 (99.41 KB)" in text
    assert " Trainable params: 25,450 (99.41 KB)" in text


def test_get_set_save_load_weights_round_trip(tmp_path, rng):
    x = rng.random((4, 6)).astype("float32")
    source = Sequential([Dense(5, activation="relu", input_dim=6), Dense(3, activation="softmax")])
    target = Sequential([Dense(5, activation="relu", input_dim=6), Dense(3, activation="softmax")])
    path = os.path.join(tmp_path, "model.weights.safetensors")
    source.save_weights(path)
    target.load_weights(path)
    np.testing.assert_array_equal(source.predict(x, verbose=0), target.predict(x, verbose=0))
    other = Sequential([Dense(5, activation="relu", input_dim=6), Dense(3, activation="softmax")])
    other.set_weights(source.get_weights())
    np.testing.assert_array_equal(source.predict(x, verbose=0), other.predict(x, verbose=0))
    wrong = Sequential([Dense(4, input_dim=6), Dense(3)])
    with pytest.raises(tf.errors.InputError, match="architectures differ"):
        wrong.load_weights(path)


KERAS_LOSS_VALUES = [  # (name, y_true, y_pred, value computed by Keras's formula)
    ("categorical_crossentropy", [[0, 1, 0]], [[0.2, 0.7, 0.1]], -np.log(0.7)),
    ("sparse_categorical_crossentropy", [1], [[0.2, 0.7, 0.1]], -np.log(0.7)),
    ("binary_crossentropy", [[1.0], [0.0]], [[0.9], [0.2]], -(np.log(0.9) + np.log(0.8)) / 2),
    ("mean_squared_error", [[1.0, 2.0]], [[2.0, 4.0]], 2.5),
    ("mean_absolute_error", [[1.0, 2.0]], [[2.0, 4.0]], 1.5),
]


@pytest.mark.parametrize("name, y_true, y_pred, expected", KERAS_LOSS_VALUES)
def test_losses_by_name_function_and_class_agree(name, y_true, y_pred, expected):
    y_true, y_pred = np.array(y_true), np.array(y_pred, dtype="float32")
    by_function = getattr(losses, name)(y_true, y_pred).mean()
    class_name = "".join(part.capitalize() for part in name.split("_")).replace("Crossentropy", "Crossentropy")
    class_name = {"MeanSquaredError": "MeanSquaredError"}.get(class_name, class_name)
    by_class = getattr(losses, class_name)()(y_true, y_pred)
    engine = losses.get(name)
    target = engine.prepare_targets(torch.as_tensor(y_true), tuple(y_pred.shape)) \
        if name != "sparse_categorical_crossentropy" else torch.as_tensor(y_true)
    by_engine = engine(torch.as_tensor(y_pred), target if target.dtype != torch.float64 else target.float())
    for value in (by_function, by_class, by_engine):
        assert float(value) == pytest.approx(expected, rel=1e-5)


def test_from_logits_losses():
    logits = np.array([[2.0, -1.0, 0.5]], dtype="float32")
    probs = np.exp(logits) / np.exp(logits).sum()
    expected = -np.log(probs[0, 2])
    assert float(losses.SparseCategoricalCrossentropy(from_logits=True)([2], logits)) == pytest.approx(expected, 1e-5)
    assert float(losses.categorical_crossentropy([[0, 0, 1]], logits, from_logits=True)[0]) == pytest.approx(
        expected, 1e-5)
    z = np.array([[0.3]], dtype="float32")
    assert float(losses.binary_crossentropy([[1.0]], z, from_logits=True)[0]) == pytest.approx(
        np.log1p(np.exp(-0.3)), 1e-5)


@pytest.mark.parametrize("loss, labels, expected_key, expected_class", [
    ("sparse_categorical_crossentropy", "indices", "accuracy", engine_metrics.ClassAccuracy),
    ("categorical_crossentropy", "one_hot", "acc", engine_metrics.ClassAccuracy),
    ("binary_crossentropy", "binary", "accuracy", engine_metrics.BinaryAccuracy),
])
def test_accuracy_resolves_as_keras_does(loss, labels, expected_key, expected_class, rng):
    x = rng.random((40, 5)).astype("float32")
    classes = 1 if labels == "binary" else 4
    y = rng.integers(0, 2 if labels == "binary" else 4, size=40)
    if labels == "one_hot":
        y = tf.keras.utils.to_categorical(y, 4)
    model = Sequential([Dense(classes, activation="sigmoid" if classes == 1 else "softmax", input_dim=5)])
    model.compile(optimizer="adam", loss=loss, metrics=[expected_key])
    history = model.fit(x, y, epochs=1, verbose=0)
    trained_metric = model._trainer._metric_set((40, classes)).metrics[0]
    assert isinstance(trained_metric, expected_class)
    assert set(history.history) == {"loss", expected_key}
    # The reported accuracy is what predict gives, computed by hand.
    probs = model.predict(x, verbose=0)
    predicted = (probs[:, 0] > 0.5).astype(int) if classes == 1 else probs.argmax(-1)
    truth = y.argmax(-1) if labels == "one_hot" else y
    assert model.evaluate(x, y, verbose=0)[1] == pytest.approx((predicted == truth).mean())


def test_evaluate_returns_loss_and_metrics_computed_on_all_samples(rng):
    x = rng.random((50, 3)).astype("float32")
    y = rng.random((50, 2)).astype("float32")
    model = Sequential([Dense(2, input_dim=3)])
    model.compile(optimizer="sgd", loss="mse", metrics=["mae", "mse"])
    loss, mae, mse = model.evaluate(x, y, batch_size=7, verbose=0)
    predictions = model.predict(x, verbose=0)
    assert loss == pytest.approx(((predictions - y) ** 2).mean(), rel=1e-5)
    assert mse == pytest.approx(loss, rel=1e-6)
    assert mae == pytest.approx(np.abs(predictions - y).mean(), rel=1e-5)
    assert model.evaluate(x, y, verbose=0, return_dict=True).keys() == {"loss", "mae", "mse"}


def test_history_keys_and_validation_split_takes_the_last_fraction(rng):
    x, y = small_classification(rng, n=100)
    model = Sequential([Dense(3, activation="softmax", input_dim=6)])
    model.compile(optimizer=Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=3, validation_split=0.2, verbose=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert history.epoch == [0, 1, 2] and model.history is history
    val_loss, val_accuracy = model.evaluate(x[80:], y[80:], verbose=0)
    assert history.history["val_loss"][-1] == pytest.approx(val_loss, rel=1e-6)
    assert history.history["val_accuracy"][-1] == pytest.approx(val_accuracy)


def test_validation_data_and_initial_epoch(rng):
    x, y = small_classification(rng, n=60)
    model = Sequential([Dense(3, activation="softmax", input_dim=6)])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=5, initial_epoch=3, validation_data=(x[:10], y[:10]), verbose=0)
    assert history.epoch == [3, 4]
    assert history.history["val_loss"][-1] == pytest.approx(model.evaluate(x[:10], y[:10], verbose=0)[0], rel=1e-6)


def test_shuffle_is_reproducible_with_set_random_seed(rng):
    x, y = small_classification(rng, n=200)

    def train():
        tf.keras.utils.set_random_seed(42)
        model = Sequential([Dense(8, activation="relu", input_dim=6), Dropout(0.2), Dense(3, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        model.fit(x, y, epochs=3, batch_size=16, verbose=0)
        return model.get_weights()

    first, second = train(), train()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_shuffle_changes_the_result_versus_no_shuffle(rng):
    x, y = small_classification(rng, n=200)
    results = []
    for shuffle in (True, False):
        tf.keras.utils.set_random_seed(3)
        model = Sequential([Dense(3, activation="softmax", input_dim=6)])
        model.compile(optimizer=SGD(0.5), loss="sparse_categorical_crossentropy")
        model.fit(x, y, epochs=2, batch_size=10, shuffle=shuffle, verbose=0)
        results.append(model.get_weights()[0])
    assert not np.allclose(results[0], results[1])


class RecordingCallback(Callback):
    def __init__(self):
        super().__init__()
        self.events = []

    def on_train_begin(self, logs=None):
        self.events.append("train_begin")

    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(f"epoch_begin {epoch}")

    def on_train_batch_end(self, batch, logs=None):
        self.events.append(f"batch_end {batch} {sorted(logs)}")

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(f"epoch_end {epoch} {sorted(logs)}")

    def on_train_end(self, logs=None):
        self.events.append("train_end")


def test_callback_hooks_run_in_keras_order_and_see_the_model(rng):
    x, y = small_classification(rng, n=20)
    model = Sequential([Dense(3, activation="softmax", input_dim=6)])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    callback = RecordingCallback()
    model.fit(x, y, epochs=2, batch_size=10, callbacks=[callback], verbose=0)
    batch = "batch_end {} ['accuracy', 'loss']"
    epoch = "epoch_end {} ['accuracy', 'loss']"
    assert callback.events == ["train_begin", "epoch_begin 0", batch.format(0), batch.format(1), epoch.format(0),
                               "epoch_begin 1", batch.format(0), batch.format(1), epoch.format(1), "train_end"]
    assert callback.model is model and callback.params["epochs"] == 2 and callback.params["steps"] == 2


def test_early_stopping_stops_and_restores_best_weights(rng):
    x, y = small_classification(rng, n=64)

    class Worsen(Callback):
        """Makes val_loss worse every epoch after the first by adding ever larger noise to the weights."""

        def on_epoch_begin(self, epoch, logs=None):
            if epoch >= 1:
                noise = np.random.default_rng(epoch)
                self.model.set_weights([w + 5.0 * epoch * noise.normal(size=w.shape).astype("float32")
                                        for w in self.model.get_weights()])

    model = Sequential([Dense(3, activation="softmax", input_dim=6)])
    model.compile(optimizer=SGD(0.0), loss="sparse_categorical_crossentropy")
    stopper = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    start = model.get_weights()
    history = model.fit(x, y, epochs=20, validation_data=(x, y), callbacks=[Worsen(), stopper], verbose=0)
    assert history.epoch == [0, 1, 2]
    assert stopper.stopped_epoch == 2 and stopper.best_epoch == 0
    for a, b in zip(model.get_weights(), start):
        np.testing.assert_array_equal(a, b)


def test_history_callback_class_is_keras_history(rng):
    x, y = small_classification(rng, n=20)
    model = Sequential([Dense(3, activation="softmax", input_dim=6)])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    assert isinstance(model.fit(x, y, verbose=0), History)


def test_to_categorical_and_set_random_seed():
    one_hot = tf.keras.utils.to_categorical(np.array([[2], [0], [1]]))
    np.testing.assert_array_equal(one_hot, np.eye(3, dtype="float32")[[2, 0, 1]])
    assert one_hot.dtype == np.float32
    assert tf.keras.utils.to_categorical([1, 3], num_classes=5).shape == (2, 5)
    tf.keras.utils.set_random_seed(9)
    a = (np.random.rand(), torch.rand(1).item())
    tf.keras.utils.set_random_seed(9)
    assert a == (np.random.rand(), torch.rand(1).item())


def test_verbose_output_is_keras_style(rng, capsys):
    x, y = small_classification(rng, n=64)
    model = Sequential([Dense(3, activation="softmax", input_dim=6)])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=2, batch_size=32, verbose=1)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Epoch 1/2" and out[2] == "Epoch 2/2"
    assert out[1].startswith("2/2 ━━━━━━━━━━━━━━━━━━━━ ") and " - loss: " in out[1] and " - accuracy: " in out[1]
    model.fit(x, y, epochs=1, verbose=2)
    line = capsys.readouterr().out.splitlines()[1]
    assert line.startswith("2/2 - ") and "/step - loss: " in line
    model.fit(x, y, epochs=1, verbose=0)
    assert capsys.readouterr().out == ""


def _two_class_model(seed=0):
    tf.keras.utils.set_random_seed(seed)
    model = Sequential([Dense(8, activation="relu", input_shape=(4,)), Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


@pytest.mark.parametrize("dtype", ["uint8", "int64", "bool"])
def test_integer_features_train_as_their_float32_values(dtype, rng):
    """uint8 pixels or counts: Keras casts them to its float32 layers; fit, evaluate, predict and
    model(x) give exactly what the same values as float32 give."""
    x = (rng.random((48, 4)) * 3).astype(dtype)
    y = rng.integers(0, 2, 48)
    given = _two_class_model()
    history = given.fit(x, y, epochs=2, verbose=0, validation_data=(x, y)).history
    as_float = _two_class_model()  # the same initial weights and shuffling order
    reference = as_float.fit(x.astype("float32"), y, epochs=2, verbose=0, validation_data=(x.astype("float32"), y))
    assert history == reference.history
    np.testing.assert_array_equal(given.predict(x, verbose=0), as_float.predict(x.astype("float32"), verbose=0))
    np.testing.assert_array_equal(np.asarray(given(x[:3])), as_float.predict(x[:3].astype("float32"), verbose=0))
    assert given.evaluate(x, y, verbose=0) == as_float.evaluate(x.astype("float32"), y, verbose=0)


def test_numpy_scalars_are_accepted_where_numbers_are(rng):
    """np.int64 from np.unique or shapes, np.float32 from a computed rate: accepted as Keras accepts them."""
    x, y = rng.random((40, 4)).astype("float32"), rng.integers(0, 2, 40)
    model = Sequential([Dense(np.int64(8), activation="relu", input_shape=(4,)), Dense(2, activation="softmax")])
    model.compile(optimizer=Adam(learning_rate=np.float32(0.01)), loss="sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=np.int64(2), batch_size=np.int64(8), validation_split=np.float32(0.25),
                        class_weight={label: 1.0 for label in np.unique(y)}, verbose=0)
    assert len(history.history["loss"]) == 2 and len(history.history["val_loss"]) == 2
    with pytest.raises(tf.errors.ConfigError, match=r"batch_size must be a whole number >= 1; got True"):
        model.fit(x, y, batch_size=True, verbose=0)


def test_zero_epochs_train_nothing_as_in_keras(rng):
    x, y = rng.random((40, 4)).astype("float32"), rng.integers(0, 2, 40)
    model = _two_class_model()
    before = model.get_weights()
    history = model.fit(x, y, epochs=0, verbose=0)
    assert history.history == {} and history.epoch == []
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)
    with pytest.raises(tf.errors.ConfigError, match=r"epochs must be a whole number >= 0; got -1"):
        model.fit(x, y, epochs=-1, verbose=0)


def test_one_output_given_as_a_list_is_a_one_output_model(rng):
    x = rng.random((32, 4)).astype("float32")
    y = x.sum(1, keepdims=True)
    inputs = Input(shape=(4,))
    listed = tf.keras.Model(inputs=[inputs], outputs=[Dense(1)(inputs)])
    listed.compile(optimizer="sgd", loss="mse")
    history = listed.fit(x, y, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    predictions = listed.predict(x, verbose=0)
    assert predictions.shape == (32, 1)
    assert listed.evaluate(x, y, verbose=0) == pytest.approx(float(((predictions - y) ** 2).mean()), rel=1e-5)


def test_unsupported_cross_entropy_options_are_named():
    losses.CategoricalCrossentropy(label_smoothing=0.0, axis=-1)  # Keras's defaults are accepted
    with pytest.raises(tf.errors.ConfigError, match=r"CategoricalCrossentropy\(label_smoothing=...\) is not supported"):
        losses.CategoricalCrossentropy(label_smoothing=0.1)
    with pytest.raises(tf.errors.ConfigError, match=r"SparseCategoricalCrossentropy\(ignore_class=...\) is not"):
        losses.SparseCategoricalCrossentropy(ignore_class=0)


def test_sequential_output_shape():
    assert Sequential([Dense(8, input_shape=(4,)), Dense(3)]).output_shape == (None, 3)
    with pytest.raises(tf.errors.ConfigError, match=r"has no output shape yet: its input shape is unknown"):
        Sequential([Dense(3)]).output_shape
