"""fit's sample_weight, class_weight, steps_per_epoch, validation_steps and validation_freq, and
evaluate's sample_weight, against torch references and Keras's closed forms.

Keras 3 weights each sample's loss and divides the sum by the number of samples in the batch
(``sum_over_batch_size``), not by the sum of the weights.
"""

import os

import numpy as np
import pytest
import torch

from conftest import small_classification
from hpctrain.errors import ConfigError, HpctrainWarning, InputError, ReplicaFailed
from hpctrain.keras import optimizers
from hpctrain.keras.callbacks import LambdaCallback
from hpctrain.keras.layers import Dense
from hpctrain.keras.models import Sequential
from hpctrain.keras.utils import to_categorical

HERE = os.path.dirname(os.path.abspath(__file__))  # replica_metrics.py, for the replicas too


def _model(learning_rate=0.1, loss="sparse_categorical_crossentropy", features=5, metrics=()):
    model = Sequential([Dense(3, activation="softmax", input_dim=features)])
    model.compile(optimizer=optimizers.SGD(learning_rate=learning_rate), loss=loss, metrics=list(metrics))
    return model


def _torch_sgd(initial, x, y, weights, batches, learning_rate=0.1):
    """Plain SGD on sum(w * cross-entropy) / batch rows, over the given row slices in order."""
    w, b = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in initial)
    x, y, weights = torch.tensor(x, dtype=torch.float64), torch.tensor(y), torch.tensor(weights, dtype=torch.float64)
    losses = []
    for rows in batches:
        per_sample = torch.nn.functional.cross_entropy(x[rows] @ w + b, y[rows], reduction="none")
        loss = (weights[rows] * per_sample).sum() / len(per_sample)
        losses.append(loss.item())
        grads = torch.autograd.grad(loss, [w, b])
        with torch.no_grad():
            w -= learning_rate * grads[0]
            b -= learning_rate * grads[1]
    return [w.detach().numpy(), b.detach().numpy()], losses


def _per_sample_cross_entropy(model, x, y):
    probs = model.predict(x, verbose=0).astype(np.float64)
    return -np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1 - 1e-7))


def test_sample_weight_trains_on_the_weighted_mean_over_the_batch(rng):
    x, y = small_classification(rng, n=24, features=5)
    weights = rng.uniform(0.0, 3.0, size=24)
    model = _model()
    initial = model.get_weights()
    history = model.fit(x, y, sample_weight=weights, epochs=3, batch_size=8, shuffle=False, verbose=0)
    batches = [slice(s, s + 8) for s in (0, 8, 16)] * 3
    expected, losses = _torch_sgd(initial, x, y, weights, batches)
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert history.history["loss"][0] == pytest.approx(np.mean(losses[:3]), rel=1e-5)
    assert model.plan.executor == "autograd"
    assert "sample or class weights" in model.plan.explain()


def test_class_weight_equals_the_matching_sample_weight_for_index_and_one_hot_labels(rng):
    x, y = small_classification(rng, n=24, features=5)
    class_weight = {0: 0.5, 2: 4.0}  # class 1 is not listed: weight 1
    per_sample = np.array([class_weight.get(int(label), 1.0) for label in y])
    by_sample = _model()
    initial = by_sample.get_weights()
    by_sample.fit(x, y, sample_weight=per_sample, epochs=2, batch_size=8, shuffle=False, verbose=0)
    for labels, loss in ((y, "sparse_categorical_crossentropy"), (to_categorical(y, 3), "categorical_crossentropy")):
        by_class = _model(loss=loss)
        by_class.set_weights(initial)
        by_class.fit(x, labels, class_weight=class_weight, epochs=2, batch_size=8, shuffle=False, verbose=0)
        for got, want in zip(by_class.get_weights(), by_sample.get_weights()):
            np.testing.assert_allclose(got, want, atol=1e-6)


def test_class_weight_reads_single_unit_binary_labels(rng):
    x = rng.normal(size=(32, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("float32").reshape(-1, 1)
    models = []
    for options in ({"class_weight": {0: 1.0, 1: 3.0}}, {"sample_weight": np.where(y[:, 0] > 0, 3.0, 1.0)}):
        model = Sequential([Dense(1, activation="sigmoid", input_dim=4)])
        model.compile(optimizer=optimizers.SGD(learning_rate=0.5), loss="binary_crossentropy")
        if models:
            model.set_weights(models[0].initial)
        model.initial = model.get_weights()
        model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0, **options)
        models.append(model)
    for got, want in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_evaluate_with_sample_weight_divides_by_the_number_of_samples(rng):
    x, y = small_classification(rng, n=30, features=5)
    weights = rng.uniform(0.0, 2.0, size=30)
    model = _model(metrics=["accuracy"])
    model.fit(x, y, epochs=1, verbose=0)
    expected = float(np.sum(weights * _per_sample_cross_entropy(model, x, y)) / 30)
    loss, accuracy = model.evaluate(x, y, sample_weight=weights, verbose=0)
    assert loss == pytest.approx(expected, rel=1e-5)
    assert model.evaluate(x, y, sample_weight=weights, batch_size=7, verbose=0)[0] == pytest.approx(expected, rel=1e-5)
    # Compiled metrics are not weighted, as in Keras (only weighted_metrics would be).
    assert accuracy == pytest.approx(model.evaluate(x, y, verbose=0)[1])


def test_weighted_validation_data_and_validation_split_weigh_the_validation_loss(rng):
    x, y = small_classification(rng, n=40, features=5)
    weights = rng.uniform(0.0, 2.0, size=40)
    model = _model(learning_rate=0.0)  # the weights stay put, so validation can be recomputed after
    history = model.fit(x, y, epochs=1, verbose=0, validation_data=(x[:10], y[:10], weights[:10]))
    assert history.history["val_loss"][0] == pytest.approx(
        model.evaluate(x[:10], y[:10], sample_weight=weights[:10], verbose=0), rel=1e-6)
    history = model.fit(x, y, sample_weight=weights, epochs=1, verbose=0, validation_split=0.25)
    assert history.history["val_loss"][0] == pytest.approx(
        model.evaluate(x[30:], y[30:], sample_weight=weights[30:], verbose=0), rel=1e-6)


def test_sample_weight_weighs_every_output_of_a_multi_output_model(rng):
    import hpctrain as tf

    x = rng.normal(size=(40, 4)).astype("float32")
    labels, target = rng.integers(0, 3, 40), rng.normal(size=(40, 1)).astype("float32")
    weights = rng.uniform(0.0, 2.0, size=40)
    inputs = tf.keras.Input(shape=(4,))
    hidden = tf.keras.layers.Dense(5, activation="tanh")(inputs)
    outputs = [tf.keras.layers.Dense(3, activation="softmax", name="cls")(hidden),
               tf.keras.layers.Dense(1, name="reg")(hidden)]
    model = tf.keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss=["sparse_categorical_crossentropy", "mse"], loss_weights=[1.0, 0.5])
    model.fit(x, [labels, target], sample_weight=weights, epochs=1, verbose=0)
    logs = model.evaluate(x, [labels, target], sample_weight=weights, verbose=0, return_dict=True)
    probs, predicted = model.predict(x, verbose=0)
    cls_loss = np.sum(weights * -np.log(np.clip(probs[np.arange(40), labels], 1e-7, 1))) / 40
    reg_loss = np.sum(weights * ((predicted - target) ** 2).mean(-1)) / 40
    assert logs["cls_loss"] == pytest.approx(cls_loss, rel=1e-5)
    assert logs["reg_loss"] == pytest.approx(reg_loss, rel=1e-5)
    assert logs["loss"] == pytest.approx(cls_loss + 0.5 * reg_loss, rel=1e-5)
    # A model with several outputs trains on Keras's own loop, which refuses class_weight.
    with pytest.raises(ValueError, match="`class_weight` is only supported for Models with a single output"):
        model.fit(x, [labels, target], class_weight={0: 2.0}, verbose=0)


def test_bad_weights_are_rejected_before_training(rng):
    x, y = small_classification(rng, n=12, features=5)
    model = _model()
    with pytest.raises(InputError, match=r"sample_weight must hold one weight per sample, shaped \(12,\); got shape "
                                         r"\(11,\)"):
        model.fit(x, y, sample_weight=np.ones(11), verbose=0)
    with pytest.raises(ConfigError, match="class_weight and sample_weight were both given"):
        model.fit(x, y, sample_weight=np.ones(12), class_weight={0: 2.0}, verbose=0)
    with pytest.raises(ConfigError, match=r"class_weight must be a dict \{class index: weight\}; got \[1, 2\]"):
        model.fit(x, y, class_weight=[1, 2], verbose=0)
    with pytest.raises(InputError, match=r"sample_weight contains 12 non-finite value\(s\)"):
        model.fit(x, y, sample_weight=np.full(12, np.nan), verbose=0)


def test_steps_per_epoch_carries_a_pass_across_epochs_as_keras_does(rng):
    x, y = small_classification(rng, n=40, features=5)  # 5 batches of 8 per pass
    model = _model()
    initial = model.get_weights()
    steps_seen = []
    count = LambdaCallback(on_epoch_begin=lambda epoch, logs: steps_seen.append(0),
                           on_train_batch_end=lambda batch, logs: steps_seen.__setitem__(-1, steps_seen[-1] + 1))
    with pytest.warns(HpctrainWarning, match=r"training data ran out after 1 of this epoch.s 2 steps \(a pass over "
                                             r"it is 5 batches\)"):
        model.fit(x, y, epochs=4, batch_size=8, steps_per_epoch=2, shuffle=False, verbose=0, callbacks=[count])
    # Epochs 1-2 take batches 0-3, epoch 3 gets batch 4 and the pass runs out, epoch 4 starts a new pass.
    assert steps_seen == [2, 2, 1, 2]
    batches = [slice(s, s + 8) for s in (0, 8, 16, 24, 32, 0, 8)]
    expected, _ = _torch_sgd(initial, x, y, np.ones(40), batches)
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_validation_steps_start_each_pass_at_the_first_batch(rng):
    # Keras 3 (3.15) validates on the same first batches every epoch, not on the next ones.
    x, y = small_classification(rng, n=30, features=5)
    model = _model(learning_rate=0.0)
    history = model.fit(x, y, epochs=3, verbose=0, validation_data=(x, y), validation_steps=1,
                        validation_batch_size=10)
    expected = [model.evaluate(x[:10], y[:10], verbose=0)] * 3
    assert history.history["val_loss"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("freq, validated", [(2, [1, 3]), ([1, 4], [0, 3])])
def test_validation_freq_validates_only_after_the_chosen_epochs(freq, validated, rng):
    x, y = small_classification(rng, n=16, features=5)
    model = _model(learning_rate=0.0)
    seen = []
    history = model.fit(x, y, epochs=4, verbose=0, validation_data=(x, y), validation_freq=freq,
                        callbacks=[LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append("val_loss" in logs))])
    assert seen == [epoch in validated for epoch in range(4)]
    assert history.history["val_loss"] == pytest.approx([model.evaluate(x, y, verbose=0)] * 2, rel=1e-6)
    assert len(history.history["loss"]) == 4


def test_bad_step_options_are_rejected(rng):
    x, y = small_classification(rng, n=12, features=5)
    model = _model()
    with pytest.raises(ConfigError, match=r"steps_per_epoch must be a whole number >= 1; got 0"):
        model.fit(x, y, steps_per_epoch=0, verbose=0)
    with pytest.raises(ConfigError, match=r"validation_freq as a list names the epochs .* got \[0\]"):
        model.fit(x, y, validation_freq=[0], verbose=0)


def _two_replicas_against_one_process(monkeypatch, rng, metrics, shuffle=False):
    import hpctrain as tf
    from hpctrain.keras.optimizers.schedules import ExponentialDecay

    for key in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PYTHONPATH", HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    x, y = small_classification(rng, n=80, features=5)  # 4 batches of 20: epochs take 2, 2, then a new pass
    weights = rng.uniform(0.0, 2.0, size=80)

    def compiled_model():
        model = Sequential([Dense(3, activation="softmax", input_dim=5)])
        model.compile(optimizer=optimizers.Adam(ExponentialDecay(0.05, decay_steps=3, decay_rate=0.5)),
                      loss="sparse_categorical_crossentropy", metrics=metrics())
        return model

    def fit(model):  # 31 validation rows: uneven shares, so summed state and averaged results would differ
        return model.fit(x, y, sample_weight=weights, epochs=3, batch_size=20, steps_per_epoch=2, verbose=0,
                         validation_data=(x[:31], y[:31], weights[:31]), shuffle=shuffle)

    tf.keras.utils.set_random_seed(0)
    reference = compiled_model()
    expected = fit(reference)
    tf.keras.utils.set_random_seed(0)
    with tf.distribute.MirroredStrategy(devices=["cpu:0", "cpu:1"]).scope():  # spawns two replicas at fit
        model = compiled_model()
    history = fit(model)
    for key, values in expected.history.items():
        np.testing.assert_allclose(history.history[key], values, atol=1e-5)
    for got, want in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert model.optimizer.iterations == 6
    return history


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_replicas_train_weighted_scheduled_steps_as_one_process(monkeypatch, rng, shuffle):
    history = _two_replicas_against_one_process(monkeypatch, rng, lambda: ["accuracy"], shuffle=shuffle)
    assert len(history.history["val_accuracy"]) == 3


@pytest.mark.xfail(strict=True, raises=(TypeError, ReplicaFailed), reason=(
    "a Keras model compiled with a custom metric class is sent to spawned replicas pickled (Keras saves it "
    "whole), and reading it back Keras cannot locate the class: 'Could not locate class CorrectFraction'"))
def test_a_custom_metric_class_sums_its_state_over_spawned_replicas(monkeypatch, rng):
    monkeypatch.syspath_prepend(HERE)
    from replica_metrics import CorrectFraction

    history = _two_replicas_against_one_process(monkeypatch, rng, lambda: ["accuracy", CorrectFraction()])
    np.testing.assert_allclose(history.history["val_correct_fraction"], history.history["val_accuracy"], atol=1e-6)
