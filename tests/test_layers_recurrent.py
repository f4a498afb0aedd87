"""LSTM and GRU against Keras's cell equations written out in float64 torch, on Keras-layout weights."""

import numpy as np
import pytest
import torch

from hpctrain.errors import ConfigError
from hpctrain.keras.layers import GRU, LSTM, Dense, Input
from hpctrain.keras.models import Sequential
from hpctrain.keras.optimizers import Adam
from layer_reference import assert_matches_reference, built

UNITS = 4


def _keras_lstm(x, kernel, recurrent_kernel, bias=None, return_sequences=False):
    """Keras's LSTM cell: gates i, f, c, o in the columns of kernel / recurrent_kernel / bias."""
    h = c = x.new_zeros(x.shape[0], UNITS)
    outputs = []
    for t in range(x.shape[1]):
        z = x[:, t] @ kernel + h @ recurrent_kernel + (0 if bias is None else bias)
        i, f, g, o = z.split(UNITS, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs, 1) if return_sequences else h


def _keras_gru(x, kernel, recurrent_kernel, bias=None, return_sequences=False):
    """Keras's GRU cell with reset_after=True: gates z, r, h; bias rows are input and recurrent."""
    h = x.new_zeros(x.shape[0], UNITS)
    input_bias, recurrent_bias = (0, 0) if bias is None else (bias[0], bias[1])
    outputs = []
    for t in range(x.shape[1]):
        x_z, x_r, x_h = (x[:, t] @ kernel + input_bias).split(UNITS, dim=1)
        r_z, r_r, r_h = (h @ recurrent_kernel + recurrent_bias).split(UNITS, dim=1)
        z, r = torch.sigmoid(x_z + r_z), torch.sigmoid(x_r + r_r)
        h = z * h + (1 - z) * torch.tanh(x_h + r * r_h)
        outputs.append(h)
    return torch.stack(outputs, 1) if return_sequences else h


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("layer_class, reference", [(LSTM, _keras_lstm), (GRU, _keras_gru)])
def test_recurrent_layer_matches_keras_equations(layer_class, reference, return_sequences, use_bias, rng):
    layer = layer_class(UNITS, return_sequences=return_sequences, use_bias=use_bias)
    x = (0.5 * rng.normal(size=(3, 5, 2))).astype("float32")
    assert_matches_reference(layer, x, lambda x, *w: reference(x, *w, return_sequences=return_sequences),
                             rng=rng)


def test_weights_have_keras_shapes_and_initial_values():
    lstm, gru = built(LSTM(UNITS), np.zeros((1, 5, 3))), built(GRU(UNITS), np.zeros((1, 5, 3)))
    assert [w.shape for w in lstm.get_weights()] == [(3, 16), (4, 16), (16,)]
    assert [w.shape for w in gru.get_weights()] == [(3, 12), (4, 12), (2, 12)]
    # unit_forget_bias: the forget gate's bias starts at one, the rest at zero
    np.testing.assert_array_equal(lstm.get_weights()[2], np.r_[np.zeros(4), np.ones(4), np.zeros(8)])
    recurrent = lstm.get_weights()[1]  # orthogonal rows
    np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(4), atol=1e-5)
    assert lstm.count_params() == 4 * (4 * (3 + 4) + 4) and gru.count_params() == 3 * 4 * (3 + 4 + 2)


def test_the_torch_kernel_holds_no_weights_of_its_own():
    layer = built(LSTM(UNITS), np.zeros((1, 5, 3)))
    assert [name for name, _ in layer.named_parameters()] == ["kernel", "recurrent_kernel", "bias"]


def test_lstm_model_learns_a_sequence_task(rng):
    """The sign of the sum of a sequence: a recurrent model trained by fit gets it right."""
    x = rng.normal(size=(256, 6, 1)).astype("float32")
    y = (x.sum((1, 2)) > 0).astype("int64")
    model = Sequential([Input(shape=(6, 1)), LSTM(8), Dense(2, activation="softmax")])
    model.compile(optimizer=Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=10, batch_size=32, verbose=0)
    assert model.evaluate(x, y, verbose=0)[1] >= 0.9


@pytest.mark.parametrize("make, message", [
    (lambda: LSTM(4, activation="relu"), "LSTM supports activation='tanh' and recurrent_activation='sigmoid'"),
    (lambda: GRU(4, reset_after=False), "GRU supports reset_after=True"),
    (lambda: LSTM(4, dropout=0.2, go_backwards=True), "LSTM: dropout, go_backwards is not supported yet"),
    (lambda: GRU(0), "GRU units must be a whole number >= 1; got 0."),
])
def test_unsupported_options_are_refused_clearly(make, message):
    with pytest.raises(ConfigError) as error:
        make()
    assert message in str(error.value)
