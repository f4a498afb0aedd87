"""Training and inference modes as Keras sets them (freezing, ``training=``, calls outside fit),
and the shape and argument checks layers make when they are built."""

import warnings

import numpy as np
import pytest
import torch

import hpctrain as tf
from hpctrain.errors import ConfigError, HpctrainWarning, InputError
from hpctrain.keras import layers as L
from hpctrain.keras.models import Model, Sequential


def _data(rng, n=64):
    return rng.random((n, 6)).astype("float32"), rng.integers(0, 3, n)


def test_a_frozen_base_keeps_its_batch_norm_in_inference_and_its_weights_as_they_were(rng):
    x, y = _data(rng)
    base = Sequential([L.Input(shape=(6,)), L.Dense(8), L.BatchNormalization(), L.Dense(5, activation="relu")])
    base.trainable = False
    inputs = L.Input(shape=(6,))
    model = Model(inputs, L.Dense(3, activation="softmax")(base(inputs, training=False)))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    before = base.get_weights()
    model.fit(x, y, epochs=2, verbose=0)
    for old, new in zip(before, base.get_weights()):
        np.testing.assert_array_equal(old, new)  # moving statistics included
    assert (len(model.trainable_weights), len(model.non_trainable_weights)) == (2, 8)
    base.trainable = True  # unfrozen: the moving statistics stay non-trainable, as in Keras
    assert (len(base.trainable_weights), len(base.non_trainable_weights)) == (6, 2)


def test_calling_a_model_on_tensors_is_inference_before_and_after_fit(rng):
    x, y = _data(rng)
    model = Sequential([L.Input(shape=(6,)), L.Dense(16), L.Dropout(0.5), L.BatchNormalization(),
                        L.Dense(3, activation="softmax")])
    tensor = torch.tensor(x)
    moving_mean = model.layers[2].moving_mean.detach().clone()
    assert torch.equal(model(tensor), model(tensor))  # no dropout
    assert torch.equal(model.layers[2].moving_mean, moving_mean)  # no statistics update
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    assert not model.training and torch.equal(model(tensor), model(tensor))


def test_training_given_in_a_graph_applies_whenever_it_runs(rng, tmp_path):
    x, y = _data(rng)
    inputs = L.Input(shape=(6,))
    sampled = Model(inputs, L.Dense(3)(L.Dropout(0.5)(L.Dense(16)(inputs), training=True)))  # Monte-Carlo dropout
    assert not np.allclose(sampled.predict(x, verbose=0), sampled.predict(x, verbose=0))
    sampled.save(tmp_path / "sampled.keras")
    reloaded = tf.keras.models.load_model(tmp_path / "sampled.keras")
    assert not np.allclose(reloaded.predict(x, verbose=0), reloaded.predict(x, verbose=0))
    norm = L.BatchNormalization()
    frozen = Model(inputs, L.Dense(3, activation="softmax")(norm(L.Dense(8)(inputs), training=False)))
    frozen.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    moving_mean = norm.moving_mean.detach().clone()
    frozen.fit(x, y, epochs=1, verbose=0)
    assert torch.equal(norm.moving_mean, moving_mean)
    dropout, ones = L.Dropout(0.5), torch.ones(4, 100)
    assert torch.equal(dropout(ones, training=False), ones) and (dropout(ones, training=True) == 0).any()


def test_windows_larger_than_their_input_are_refused_when_built():
    with pytest.raises(ConfigError, match=r"conv2d.*: kernel_size=\(5, 5\) with padding='valid' does not fit an input "
                                          r"shaped \(None, 3, 3, 1\)"):
        Sequential([L.Input(shape=(3, 3, 1)), L.Conv2D(4, 5)])
    with pytest.raises(ConfigError, match=r"pool_size=\(5, 5\) with padding='valid' does not fit"):
        Sequential([L.Input(shape=(3, 3, 1)), L.MaxPooling2D(5)])
    assert Sequential([L.Input(shape=(3, 3, 1)), L.Conv2D(4, 5, padding="same")]).output_shape == (None, 3, 3, 4)


def test_merge_and_flatten_shapes_and_axes():
    a, b = L.Input(shape=(4,)), L.Input(shape=(4,))
    with pytest.raises(ConfigError, match=r"Concatenate\(axis=3\) is outside inputs of rank 2.*-2\.\.1"):
        L.Concatenate(axis=3)([a, b])
    assert L.Concatenate(axis=-1)([a, b]).shape == (None, 8)
    assert L.Flatten()(L.Input(shape=(None, 4))).shape == (None, None)


def test_a_sequence_model_takes_any_length_its_input_leaves_open(rng):
    model = Sequential([L.Input(shape=(None, 3)), L.LSTM(4), L.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(rng.random((8, 7, 3)).astype("float32"), rng.random((8, 1)), epochs=1, verbose=0)
    assert model.predict(rng.random((2, 5, 3)).astype("float32"), verbose=0).shape == (2, 1)
    with pytest.raises(InputError, match=r"x has samples shaped \(5, 4\)"):
        model.predict(rng.random((2, 5, 4)).astype("float32"), verbose=0)


def test_embedding_ids_out_of_range_are_named():
    model = Sequential([L.Embedding(5, 3), L.Flatten(), L.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(InputError, match=r"the ids go from 1 to 7, but Embedding\(input_dim=5\) takes ids 0\.\.4"):
        model.fit(np.array([[1, 2], [3, 7]]), np.array([1.0, 2.0]), epochs=1, verbose=0)


def test_dropout_options_that_are_not_applied_are_said():
    with pytest.raises(ConfigError, match=r"Dropout\(noise_shape=...\) is not supported yet"):
        L.Dropout(0.5, noise_shape=(None, 1))
    with pytest.warns(HpctrainWarning, match=r"Dropout\(seed=3\) is not used"):
        L.Dropout(0.5, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        L.Dropout(0.5)


def test_layer_arguments_are_checked_by_name():
    with pytest.raises(ConfigError, match=r"ReLU max_value, negative_slope and threshold must be >= 0"):
        L.ReLU(threshold=-1)
    assert L.Reshape((np.int64(2), 3)).target_shape == (2, 3)
    with pytest.raises(ConfigError, match=r"BatchNormalization momentum must be a number in \[0, 1\]; got 'x'"):
        L.BatchNormalization(momentum="x")
    with pytest.raises(ConfigError, match=r"Rescaling scale must be a number; got 'a'"):
        L.Rescaling("a")
    with pytest.raises(ConfigError, match=r"Concatenate axis must be one int; got 'x'"):
        L.Concatenate(axis="x")
    with pytest.raises(ConfigError, match=r"LSTM: return_state is not supported yet; remove it\.$"):
        L.LSTM(3, return_state=True)
