"""Custom losses (functions and Loss subclasses) and custom metrics (functions and Metric subclasses)
as Keras runs them, checked against torch references and NumPy."""

import numpy as np
import pytest
import torch

from conftest import small_classification
from hpctrain.errors import ConfigError
from hpctrain.keras import losses, metrics, optimizers
from hpctrain.keras.layers import Dense
from hpctrain.keras.models import Sequential
from hpctrain.keras.utils import to_categorical


def _regression(rng, n=24):
    x = rng.normal(size=(n, 4)).astype("float32")
    y = (x @ rng.normal(size=(4, 2)) + 0.1).astype("float32")
    return x, y


def _torch_sgd(initial, x, y, loss_fn, batches, learning_rate):
    w, b = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in initial)
    x, y = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    for rows in batches:
        grads = torch.autograd.grad(loss_fn(x[rows] @ w + b, y[rows]), [w, b])
        with torch.no_grad():
            w -= learning_rate * grads[0]
            b -= learning_rate * grads[1]
    return [w.detach().numpy(), b.detach().numpy()]


def quartic_error(y_true, y_pred):
    return ((y_pred - y_true) ** 4).mean(dim=-1)


class SumOfSquares(losses.Loss):
    def call(self, y_true, y_pred):
        return ((y_pred - y_true) ** 2).sum(dim=-1)


CUSTOM_LOSSES = {
    # name: (loss given to compile, the same in torch on a batch's predictions and targets)
    "function": (lambda: quartic_error, lambda p, t: ((p - t) ** 4).mean()),
    "subclass": (lambda: SumOfSquares(), lambda p, t: ((p - t) ** 2).sum(-1).mean()),
    "subclass_sum": (lambda: SumOfSquares(reduction="sum"), lambda p, t: ((p - t) ** 2).sum()),
}


@pytest.mark.parametrize("name", sorted(CUSTOM_LOSSES))
def test_custom_losses_train_like_torch(name, rng):
    make_loss, torch_loss = CUSTOM_LOSSES[name]
    x, y = _regression(rng)
    model = Sequential([Dense(2, input_dim=4)])
    model.compile(optimizer=optimizers.SGD(learning_rate=0.01), loss=make_loss())
    initial = model.get_weights()
    history = model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    expected = _torch_sgd(initial, x, y, torch_loss, [slice(s, s + 8) for s in (0, 8, 16)] * 2, 0.01)
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert model.plan.executor == "autograd"
    assert np.isfinite(history.history["loss"]).all()


def test_a_custom_loss_gets_one_hot_labels_as_float_and_softmax_probabilities(rng):
    x, y = small_classification(rng, n=24, features=5)
    seen = {}

    def my_crossentropy(y_true, y_pred):
        seen.update(true=(y_true.dtype, tuple(y_true.shape)), row_sums=y_pred.sum(-1).detach())
        return -(y_true * torch.log(y_pred)).sum(-1)

    model = Sequential([Dense(3, activation="softmax", input_dim=5)])
    model.compile(optimizer="sgd", loss=my_crossentropy)
    twin = Sequential([Dense(3, activation="softmax", input_dim=5)])
    twin.compile(optimizer="sgd", loss="categorical_crossentropy")
    twin.set_weights(model.get_weights())
    history = model.fit(x, to_categorical(y, 3), epochs=1, batch_size=8, shuffle=False, verbose=0)
    reference = twin.fit(x, to_categorical(y, 3), epochs=1, batch_size=8, shuffle=False, verbose=0)
    assert seen["true"] == (torch.float32, (8, 3))
    torch.testing.assert_close(seen["row_sums"], torch.ones(8))
    assert history.history["loss"][0] == pytest.approx(reference.history["loss"][0], rel=1e-5)
    for got, want in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_loss_objects_reduce_and_weight_as_keras_on_numpy_data():
    y_true = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 0.0]], dtype="float32")
    y_pred = np.array([[1.0, 1.0], [1.0, 3.0], [0.0, 0.0]], dtype="float32")
    weights = np.array([1.0, 0.5, 0.0])
    per_sample = np.array([0.5, 2.0, 2.0])  # mean squared error of each row
    mse = losses.MeanSquaredError()
    assert mse(y_true, y_pred).numpy() == pytest.approx(per_sample.mean())
    assert mse(y_true, y_pred, sample_weight=weights).numpy() == pytest.approx((per_sample * weights).sum() / 3)
    assert losses.MeanSquaredError(reduction="sum")(y_true, y_pred).numpy() == pytest.approx(4.5)
    assert losses.MeanSquaredError(reduction="mean_with_sample_weight")(
        y_true, y_pred, sample_weight=weights).numpy() == pytest.approx(1.5 / 1.5)
    np.testing.assert_allclose(losses.MeanSquaredError(reduction=None)(y_true, y_pred).numpy(), per_sample)
    with pytest.raises(ConfigError, match=r"reduction must be one of .* got 'average'"):
        losses.MeanSquaredError(reduction="average")
    with pytest.raises(ConfigError, match=r"has reduction=None: one value per sample"):
        Sequential([Dense(2, input_dim=2)]).compile(loss=losses.MeanSquaredError(reduction=None))


def squared_error(y_true, y_pred):
    return ((y_true - y_pred) ** 2).mean(-1)


def test_one_dimensional_labels_meet_one_unit_predictions_as_in_keras(rng):
    """(N,) labels against a (N, 1) output: a wrapped function, a built-in loss with another
    reduction and a metric function all see them aligned, as Keras's wrappers align them (no
    (N, N) broadcast)."""
    assert losses.MeanSquaredError()(np.array([1.0, 2.0, 3.0]), np.array([[1.0], [2.0], [4.0]])).numpy() \
        == pytest.approx(1 / 3)
    x = rng.normal(size=(40, 4)).astype("float32")
    y = x.sum(1)
    model = Sequential([Dense(1, input_shape=(4,))])
    model.compile(optimizer="sgd", loss=squared_error, metrics=[squared_error, "mse"])
    loss, function_metric, builtin_metric = model.evaluate(x, y, verbose=0)
    true_mse = float(((model.predict(x, verbose=0)[:, 0] - y) ** 2).mean())
    assert loss == pytest.approx(true_mse, rel=1e-5)
    assert function_metric == pytest.approx(true_mse, rel=1e-5)
    assert builtin_metric == pytest.approx(true_mse, rel=1e-5)
    summed = Sequential([Dense(1, input_shape=(4,))])
    summed.compile(optimizer="sgd", loss=losses.MeanSquaredError(reduction="sum"))
    predictions = summed.predict(x, verbose=0)[:, 0]
    assert summed.evaluate(x, y, batch_size=40, verbose=0) == pytest.approx(float(((predictions - y) ** 2).sum()),
                                                                            rel=1e-5)


class CountCorrect(metrics.Metric):
    """Keras's custom-metric pattern: state from add_weight, updated per batch."""

    def __init__(self, name="count_correct", **kwargs):
        super().__init__(name=name, **kwargs)
        self.correct = self.add_weight(name="correct", initializer="zeros")
        self.updates = self.add_weight(name="updates", initializer="zeros")

    def update_state(self, y_true, y_pred, sample_weight=None):
        assert y_true.shape == y_pred.shape  # categorical_crossentropy's labels arrive one-hot, as given
        self.correct.assign_add((y_pred.argmax(-1) == y_true.argmax(-1)).sum())
        self.updates.assign_add(1.0)

    def result(self):
        return self.correct


class CountUpdates(CountCorrect):
    def result(self):
        return self.updates


def max_probability(y_true, y_pred):
    return y_pred.max(dim=-1).values


@pytest.mark.parametrize("run_eagerly", [False, True], ids=["static", "autograd"])
def test_custom_metrics_accumulate_per_batch_and_per_pass(run_eagerly, rng):
    x, y = small_classification(rng, n=40, features=5)
    model = Sequential([Dense(3, activation="softmax", input_dim=5)])
    model.compile(optimizer=optimizers.SGD(learning_rate=0.0), loss="categorical_crossentropy",
                  metrics=["accuracy", CountCorrect(), CountUpdates(name="updates"), max_probability],
                  run_eagerly=run_eagerly)
    labels = to_categorical(y, 3)
    history = model.fit(x, labels, epochs=2, batch_size=16, verbose=0, validation_data=(x[:10], labels[:10]))
    assert model.plan.executor == ("autograd" if run_eagerly else "static")
    probs = model.predict(x, verbose=0)
    correct = float((probs.argmax(-1) == y).sum())
    assert history.history["count_correct"] == [correct, correct]  # the learning rate is 0: nothing changes
    assert history.history["updates"] == [3.0, 3.0]  # update_state once per batch: 16 + 16 + 8 rows
    assert history.history["val_count_correct"] == [float((probs[:10].argmax(-1) == y[:10]).sum())] * 2
    assert history.history["max_probability"][0] == pytest.approx(probs.max(-1).mean(), rel=1e-5)
    assert model.metrics_names == ["loss", "accuracy", "count_correct", "updates", "max_probability"]
    assert list(model.evaluate(x, labels, verbose=0, return_dict=True)) == model.metrics_names


def test_metric_objects_work_on_their_own_like_keras():
    metric = CountCorrect()
    value = metric(np.eye(3), np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.0, 0.0, 1.0]]))
    assert float(value) == 2.0 and float(metric.result()) == 2.0
    metric.reset_state()
    assert float(metric.result()) == 0.0 and metric.variables[0].numpy() == 0.0


def test_built_in_metric_classes_work_on_their_own_like_keras():
    """update_state / result / reset_state / calling, as in a loop of one's own; values as Keras's."""
    accuracy = metrics.SparseCategoricalAccuracy()
    accuracy.update_state([1, 2, 0], [[0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.9, 0.05, 0.05]])
    assert accuracy.result().numpy() == pytest.approx(2 / 3)
    accuracy.update_state(np.array([[2]]), np.array([[0.1, 0.2, 0.7]]))  # accumulates across batches
    assert float(accuracy.result()) == pytest.approx(3 / 4)
    accuracy.reset_state()
    assert float(accuracy.result()) == 0.0
    assert float(accuracy([0, 1], [[0.9, 0.1, 0.0], [0.8, 0.2, 0.0]], sample_weight=[1, 3])) == pytest.approx(0.25)
    assert float(metrics.CategoricalAccuracy()([[0, 1], [1, 0]], [[0.3, 0.7], [0.4, 0.6]])) == 0.5
    assert float(metrics.BinaryAccuracy()([1, 0, 1], [[0.7], [0.2], [0.4]])) == pytest.approx(2 / 3)
    assert float(metrics.MeanSquaredError()([1.0, 2.0], [[1.5], [2.0]])) == pytest.approx(0.125)
    assert float(metrics.MeanAbsoluteError()([[1.0, 2.0]], [[2.0, 4.0]])) == pytest.approx(1.5)


def test_a_built_in_metric_object_in_compile_is_accumulated_by_the_engine(rng):
    x, y = small_classification(rng, n=30)
    model = Sequential([Dense(3, activation="softmax", input_dim=6)])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                  metrics=[metrics.SparseCategoricalAccuracy()])
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    expected = float((model.predict(x, verbose=0).argmax(-1) == y).mean())
    assert logs["sparse_categorical_accuracy"] == pytest.approx(expected)
