"""Bad input fails before the first step, with a message that helps.

Where the engine trains (arrays given to a compiled single-output model), hpctrain checks the
data and raises its own errors; where Keras's own loop runs or Keras resolves a name (a list
for x, no targets, an unknown optimizer, metric or activation, fit before compile), the user
gets Keras's own error, and these tests pin its type and key phrase.
"""

import warnings

import numpy as np
import torch
import pytest

from hpctrain import errors
from hpctrain.keras.layers import Dense
from hpctrain.keras.models import Sequential


def _model(loss="sparse_categorical_crossentropy", compile=True, units=3):
    model = Sequential([Dense(8, activation="relu", input_dim=4), Dense(units, activation="softmax")])
    if compile:
        model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    return model


@pytest.fixture
def data(rng):
    return rng.random((20, 4)).astype("float32"), rng.integers(0, 3, size=20)


def _fit(model, x, y, **kwargs):
    model.fit(x, y, epochs=1, verbose=0, **kwargs)


def test_x_and_y_of_different_lengths(data):
    x, y = data
    with pytest.raises(ValueError, match=r"(?s)Data cardinality is ambiguous.*'x' sizes: 20.*'y' sizes: 19"):
        _fit(_model(), x, y[:19])


def test_feature_count_not_matching_the_first_layer(data):
    x, y = data
    # Keras's own check, made as fit builds the model on the first rows.
    with pytest.raises(ValueError, match=r"expected axis -1 of input shape to have value 4, but received input with "
                                         r"shape \(2, 5\)"):
        _fit(_model(), np.hstack([x, x[:, :1]]), y)


def test_feature_count_mismatch_in_a_native_module_is_reported_too(data):
    import torch

    from hpctrain import Trainer

    x, y = data
    trainer = Trainer(torch.nn.Linear(5, 3), loss=torch.nn.functional.cross_entropy, optimizer="sgd")
    with pytest.raises(errors.InputError, match="could not run on x with \\(4,\\) features"):
        trainer.fit(x, y, verbose=0)


def test_labels_out_of_range_for_the_output_width(data):
    x, y = data
    y = y.copy()
    y[7] = 3
    with pytest.raises(errors.InputError, match=r"label 3 is out of range for a model with 3 outputs.*0\.\.2"):
        _fit(_model(), x, y)


def test_negative_labels(data):
    x, y = data
    y = y.copy()
    y[0] = -1
    with pytest.raises(errors.InputError, match="label -1 is out of range"):
        _fit(_model(), x, y)


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "Inf")])
def test_nan_or_inf_in_x_trains_on_keras_loop_as_keras_does_and_says_so(data, bad, word, capsys):
    x, y = data
    x = x.copy()
    x[5, 2] = bad
    history = _model().fit(x, y, epochs=1, batch_size=8, verbose=1)
    assert "hpctrain: fit runs on Keras's own loop: x or its targets hold NaN or Inf" in capsys.readouterr().out
    assert not np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("values, bad", [([3e38, 3e38, -1.0], None), ([3e38, 3e38, np.nan], "NaN"),
                                         ([-np.inf, 1.0, 2.0], "Inf")])
def test_finite_check_tells_an_overflowing_sum_from_a_bad_value(values, bad):
    from hpctrain.engine.validation import check_finite

    x = torch.tensor(values, dtype=torch.float32).reshape(3, 1)  # the first two rows sum to inf
    if bad is None:
        check_finite(x, name="x")
        return
    with pytest.raises(errors.InputError, match=rf"x contains 1 non-finite value\(s\) \({bad} first"):
        check_finite(x, name="x")


def test_non_numeric_arrays(data):
    _, y = data
    x = np.array([["a", "b", "c", "d"]] * 20)
    with pytest.raises(ValueError, match=r"could not convert string to float: np.str_\('a'\)"):
        _fit(_model(), x, y)


def test_ragged_rows(data):
    _, y = data
    with pytest.raises(ValueError, match=r"Unrecognized data type: x=\[\[1.0, 2.0, 3.0, 4.0\], \[1.0\]"):
        _fit(_model(), [[1.0, 2.0, 3.0, 4.0], [1.0]] * 10, y)


@pytest.mark.parametrize("batch_size", [0, -3, 2.5])
def test_batch_size_below_one(data, batch_size):
    x, y = data
    with pytest.raises(errors.ConfigError, match=rf"batch_size must be a whole number >= 1; got {batch_size}"):
        _fit(_model(), x, y, batch_size=batch_size)


def test_unknown_optimizer_names_fail_at_compile():
    with pytest.raises(ValueError, match="Could not interpret optimizer identifier: adamx"):
        _model(compile=False).compile(optimizer="adamx", loss="mse")


@pytest.mark.parametrize("kind, kwargs", [("loss", {"loss": "crossentropyy"}),
                                          ("metric", {"loss": "mse", "metrics": ["accurcy"]})])
def test_unknown_loss_and_metric_names_fail_at_the_first_fit(data, kind, kwargs):
    # Keras resolves loss and metric names against the first batch's shapes.
    x, _ = data
    model = _model(compile=False)
    model.compile(optimizer="adam", **kwargs)
    with pytest.raises(ValueError, match=f"Could not interpret {kind} identifier: {kwargs.get('metrics', [None])[0] or kwargs['loss']}"):
        _fit(model, x, np.zeros((20, 3), "float32"))


def test_unknown_activation_fails_when_the_layer_is_made():
    with pytest.raises(ValueError, match="Could not interpret activation function identifier: relu7"):
        Dense(3, activation="relu7")


@pytest.mark.parametrize("name, labels", [("crossentropy", "sparse"), ("ce", "one_hot")])
def test_crossentropy_by_the_targets_shapes_trains_as_keras_does(data, name, labels):
    # Keras picks sparse, categorical or binary cross-entropy for loss="crossentropy" from the
    # targets and outputs; hpctrain hands such a model to Keras's own loop, which trains it.
    from hpctrain import keras

    x, y = data
    targets = y if labels == "sparse" else keras.utils.to_categorical(y, 3)
    results = []
    for engine in (True, False):
        keras.utils.set_random_seed(1)
        model = _model(loss=name)
        keras.use_engine(engine)
        try:
            history = model.fit(x, targets, epochs=2, batch_size=5, shuffle=False, verbose=0)
        finally:
            keras.use_engine(True)
        results.append((history.history["loss"], model.get_weights()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_fit_before_compile(data):
    x, y = data
    with pytest.raises(ValueError, match=r"You must call `compile\(\)` before using the model"):
        _fit(_model(compile=False), x, y)


def test_float_labels_whose_shape_does_not_match_the_output(data):
    x, _ = data
    # Keras's own check, made as fit builds the compiled loss on the first rows.
    with pytest.raises(ValueError, match=r"`target` and `output` must have the same shape.*\[2, 5\].*\[2, 3\]"):
        _fit(_model(loss="categorical_crossentropy"), x, np.eye(5, dtype="float32")[np.arange(20) % 5])


def test_regression_labels_whose_shape_does_not_match_the_output(data):
    x, _ = data
    # As in Keras's own fit on the torch backend: the subtraction in the loss fails.
    with pytest.raises(RuntimeError, match=r"The size of tensor a \(2\) must match the size of tensor b \(3\)"):
        _fit(_model(loss="mse"), x, np.zeros((20, 2)))


def test_integer_labels_with_categorical_crossentropy_warn_once_and_train(data):
    x, y = data
    model = _model(loss="categorical_crossentropy")
    with pytest.warns(errors.HpctrainWarning, match="treating them as class indices") as caught:
        history = model.fit(x, y.reshape(-1, 1), epochs=2, verbose=0)
    assert len([w for w in caught if "class indices" in str(w.message)]) == 1
    assert len(history.history["loss"]) == 2


def test_errors_are_one_family_and_still_value_errors():
    assert issubclass(errors.InputError, errors.HpctrainError) and issubclass(errors.InputError, ValueError)
    assert issubclass(errors.ConfigError, errors.HpctrainError)
    assert issubclass(errors.NotCompiledError, errors.HpctrainError)


def test_validation_split_out_of_range(data):
    x, y = data
    with pytest.raises(errors.ConfigError, match=r"validation_split must be a number in \[0, 1\); got 1.5"):
        _fit(_model(), x, y, validation_split=1.5)


def test_missing_labels(data):
    # fit without targets runs on Keras's own loop, whose loss then fails on the missing targets.
    x, _ = data
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'shape'"):
        _fit(_model(), x, None)


@pytest.mark.parametrize("rank, warns", [(0, True), (1, False)])
def test_only_rank_zero_of_a_group_warns(data, rank, warns):
    x, y = data
    model = Sequential([Dense(10, activation="softmax", input_dim=x.shape[1])])
    model.compile(optimizer="adam", loss="categorical_crossentropy")  # integer labels: a warning
    errors.warn_only_on_rank_zero(rank)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(x, y, epochs=1, verbose=0)
    finally:
        errors.warn_only_on_rank_zero(0)
    said = [str(w.message) for w in caught if issubclass(w.category, errors.HpctrainWarning)]
    assert bool(said) == warns
    if warns:
        assert "treating them as class indices" in said[0]
