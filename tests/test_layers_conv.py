"""Conv1D, Conv2D and pooling layers against plain torch (float64) and NumPy: channels-last, Keras padding."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hpctrain.errors import ConfigError
from hpctrain.keras.layers import (AveragePooling2D, Conv1D, Conv2D, Dense, Flatten, GlobalAveragePooling2D, Input,
                                   MaxPooling2D)
from hpctrain.keras.models import Sequential, inference_batch_size
from layer_reference import assert_matches_reference, built


def _conv2d_reference(pads, strides=(1, 1), dilation=(1, 1), groups=1):
    """Hand-permuted F.conv2d: NHWC -> NCHW, kernel (kh, kw, in, out) -> (out, in, kh, kw), explicit pads."""
    (top, bottom), (left, right) = pads

    def reference(x, kernel, bias=None):
        y = F.conv2d(F.pad(x.permute(0, 3, 1, 2), (left, right, top, bottom)), kernel.permute(3, 2, 0, 1), bias,
                     strides, 0, dilation, groups)
        return y.permute(0, 2, 3, 1)
    return reference


# TensorFlow's 'same' pads, worked out by hand: total = (ceil(n/s) - 1) * s + (k - 1) * d + 1 - n,
# the odd one after (bottom/right).
CONV2D_CASES = {
    "valid": (dict(padding="valid"), (5, 6), [(0, 0), (0, 0)], {}),
    "same_odd_kernel": (dict(padding="same"), (5, 6), [(1, 1), (1, 1)], {}),
    "same_even_kernel": (dict(kernel_size=2, padding="same"), (5, 6), [(0, 1), (0, 1)], {}),
    "same_stride_2": (dict(padding="same", strides=2), (5, 6), [(1, 1), (0, 1)], dict(strides=(2, 2))),
    "valid_stride_2_1": (dict(strides=(2, 1)), (5, 6), [(0, 0), (0, 0)], dict(strides=(2, 1))),
    "same_dilation_2": (dict(padding="same", dilation_rate=2), (5, 6), [(2, 2), (2, 2)], dict(dilation=(2, 2))),
    "groups_2": (dict(groups=2), (5, 6), [(0, 0), (0, 0)], dict(groups=2)),
}


@pytest.mark.parametrize("case", sorted(CONV2D_CASES))
def test_conv2d_matches_torch_outputs_and_gradients(case, rng):
    arguments, (h, w), pads, reference_options = CONV2D_CASES[case]
    layer = Conv2D(**{"filters": 4, "kernel_size": 3, **arguments})
    x = rng.normal(size=(2, h, w, 4)).astype("float32")
    out = assert_matches_reference(layer, x, _conv2d_reference(pads, **reference_options), rng=rng)
    assert tuple(out.shape[1:]) == layer.compute_output_shape((None, h, w, 4))[1:]


def test_conv2d_is_channels_last_as_in_keras(rng):
    """(batch, height, width, channels) with all three different, checked by an explicit NumPy sum."""
    layer = built(Conv2D(2, (2, 3), activation="relu"), np.zeros((1, 4, 5, 3)))
    assert layer.kernel.shape == (2, 3, 3, 2)  # Keras's (kh, kw, in, out)
    x = rng.normal(size=(2, 4, 5, 3)).astype("float32")
    kernel, bias = [rng.normal(size=w.shape).astype("float32") for w in layer.get_weights()]
    layer.set_weights([kernel, bias])
    expected = np.zeros((2, 3, 3, 2))
    for i in range(3):
        for j in range(3):
            expected[:, i, j, :] = np.einsum("nabc,abcf->nf", x[:, i:i + 2, j:j + 3, :], kernel) + bias
    np.testing.assert_allclose(layer(torch.tensor(x)).detach().numpy(), np.maximum(expected, 0), atol=1e-5)


def test_conv2d_reads_integer_pixels_as_float(rng):
    layer = built(Conv2D(2, 3), np.zeros((1, 5, 5, 1)))
    pixels = rng.integers(0, 256, size=(2, 5, 5, 1))
    np.testing.assert_allclose(layer(torch.tensor(pixels)).detach().numpy(),
                               layer(torch.tensor(pixels, dtype=torch.float32)).detach().numpy())


@pytest.mark.parametrize("padding, pads", [("valid", (0, 0)), ("same", (1, 1)), ("causal", (2, 0))])
def test_conv1d_matches_torch(padding, pads, rng):
    layer = Conv1D(3, 3, padding=padding)
    x = rng.normal(size=(2, 7, 4)).astype("float32")

    def reference(x, kernel, bias):
        return F.conv1d(F.pad(x.permute(0, 2, 1), pads), kernel.permute(2, 1, 0), bias).permute(0, 2, 1)

    out = assert_matches_reference(layer, x, reference, rng=rng)
    assert tuple(out.shape) == (2, 7 if padding != "valid" else 5, 3)


def test_conv1d_causal_output_never_sees_the_future(rng):
    layer = built(Conv1D(1, 3, padding="causal", dilation_rate=2), np.zeros((1, 9, 1)))
    x = rng.normal(size=(1, 9, 1)).astype("float32")
    changed = x.copy()
    changed[0, 6:] += 1.0
    a, b = (layer(torch.tensor(v)).detach().numpy() for v in (x, changed))
    np.testing.assert_array_equal(a[0, :6], b[0, :6])
    assert not np.allclose(a[0, 6:], b[0, 6:])


def _window_reference(pool_size, strides, pads, reduce):
    """Each output is ``reduce`` over the real pixels of its window (padding never counts)."""
    (top, _), (left, _) = pads

    def reference(x, out_h, out_w):
        rows = []
        for i in range(out_h):
            row = []
            for j in range(out_w):
                r0, c0 = i * strides[0] - top, j * strides[1] - left
                window = x[:, max(r0, 0):r0 + pool_size[0], max(c0, 0):c0 + pool_size[1], :]
                row.append(reduce(window))
            rows.append(torch.stack(row, 1))
        return torch.stack(rows, 1)
    return reference


POOL_CASES = {  # arguments, input (h, w), pads, output (h, w)
    "default_2x2": (dict(), (6, 7), [(0, 0), (0, 0)], (3, 3)),
    "pool_3_stride_2_valid": (dict(pool_size=3, strides=2), (7, 6), [(0, 0), (0, 0)], (3, 2)),
    "same_uneven": (dict(pool_size=2, padding="same"), (5, 7), [(0, 1), (0, 1)], (3, 4)),
    "same_pool_3_stride_1": (dict(pool_size=3, strides=1, padding="same"), (4, 5), [(1, 1), (1, 1)], (4, 5)),
    "same_pool_3_stride_2": (dict(pool_size=(3, 2), strides=2, padding="same"), (6, 5), [(0, 1), (0, 1)], (3, 3)),
}


@pytest.mark.parametrize("kind", ["max", "average"])
@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_pooling_matches_window_reference(kind, case, rng):
    arguments, (h, w), pads, (out_h, out_w) = POOL_CASES[case]
    layer = (MaxPooling2D if kind == "max" else AveragePooling2D)(**arguments)
    reduce = (lambda window: window.amax((1, 2))) if kind == "max" else (lambda window: window.mean((1, 2)))
    window = _window_reference(layer.pool_size, layer.strides, pads, reduce)
    x = rng.normal(size=(2, h, w, 3)).astype("float32")
    assert layer.compute_output_shape((None, h, w, 3)) == (None, out_h, out_w, 3)
    assert_matches_reference(layer, x, lambda x: window(x, out_h, out_w), rng=rng)


def test_pooling_strides_default_to_the_pool_size():
    assert MaxPooling2D(pool_size=3).strides == (3, 3)
    assert AveragePooling2D(pool_size=(2, 3), strides=1).strides == (1, 1)


@pytest.mark.parametrize("keepdims", [False, True])
def test_global_average_pooling_2d(keepdims, rng):
    layer = GlobalAveragePooling2D(keepdims=keepdims)
    x = rng.normal(size=(2, 3, 4, 5)).astype("float32")
    assert_matches_reference(layer, x, lambda x: x.mean((1, 2), keepdim=keepdims), rng=rng)
    assert layer.compute_output_shape((None, 3, 4, 5)) == ((None, 1, 1, 5) if keepdims else (None, 5))


def test_channels_first_data_format_skips_the_permute(rng):
    layer = Conv2D(2, 3, data_format="channels_first")
    x = rng.normal(size=(2, 3, 5, 6)).astype("float32")
    assert_matches_reference(layer, x, lambda x, k, b: F.conv2d(x, k.permute(3, 2, 0, 1), b), rng=rng)


def test_flatten_after_conv_keeps_keras_order_height_width_channels(rng):
    model = Sequential([Input(shape=(4, 4, 2)), Conv2D(3, 3), MaxPooling2D(2)])
    flat = Sequential([Input(shape=(4, 4, 2)), Conv2D(3, 3), MaxPooling2D(2),
                       Flatten()])
    flat.set_weights(model.get_weights())
    x = rng.normal(size=(3, 4, 4, 2)).astype("float32")
    np.testing.assert_array_equal(flat.predict(x, verbose=0), model.predict(x, verbose=0).reshape(3, -1))


def test_summary_shapes_and_counts_match_keras():
    model = Sequential([Input(shape=(28, 28, 1)), Conv2D(32, 3, activation="relu"), MaxPooling2D(2),
                        Conv2D(64, 3, padding="same", strides=2), AveragePooling2D(padding="same"),
                        GlobalAveragePooling2D(), Dense(10)])
    assert model.output_shapes() == [(None, 26, 26, 32), (None, 13, 13, 32), (None, 7, 7, 64), (None, 4, 4, 64),
                                     (None, 64), (None, 10)]
    assert [layer.count_params() for layer in model.layers] == [320, 0, 18496, 0, 0, 650]
    # Keras's automatic names (a counter suffix when the name was taken before in this process)
    prefixes = ["conv2d", "max_pooling2d", "conv2d", "average_pooling2d", "global_average_pooling2d", "dense"]
    assert all(re.fullmatch(rf"{prefix}(_\d+)?", layer.name) for prefix, layer in zip(prefixes, model.layers))


@pytest.mark.parametrize("make, message", [
    (lambda: Conv2D(0, 3), "Conv2D filters must be a whole number >= 1; got 0."),
    (lambda: Conv2D(4, (3, 3, 3)), "Conv2D kernel_size must be a whole number >= 1 or a tuple of 2; got (3, 3, 3)."),
    (lambda: Conv2D(4, 3, padding="full"), "Conv2D padding must be one of 'valid', 'same'; got 'full'."),
    (lambda: Conv2D(4, 3, padding="causal"), "Conv2D padding must be one of 'valid', 'same'; got 'causal'."),
    (lambda: MaxPooling2D(data_format="nhwc"), "MaxPooling2D data_format must be 'channels_last'"),
    (lambda: Conv2D(3, 3, groups=2), "Conv2D filters (3) must be divisible by groups (2)."),
])
def test_bad_arguments_say_what_was_expected(make, message):
    with pytest.raises(ConfigError) as error:
        make()
    assert message in str(error.value)


def test_a_flat_input_to_conv2d_says_to_reshape():
    with pytest.raises(ConfigError, match=r"Conv2D conv2d\S* takes inputs shaped \(batch, height, width, channels\); "
                                          r"got \(None, 784\)\. Add a Reshape layer first"):
        Sequential([Input(shape=(784,)), Conv2D(4, 3)])


def test_wide_activations_evaluate_in_cache_sized_batches():
    convnet = Sequential([Input(shape=(28, 28, 1)), Conv2D(32, 3), Flatten(), Dense(10)])
    mlp = Sequential([Input(shape=(784,)), Dense(128), Dense(10)])
    assert inference_batch_size(convnet) == 256  # 2**23 values / (26 * 26 * 32) per row, as a power of two
    assert inference_batch_size(mlp) == 8192
    convnet.compile(optimizer="adam", loss="mse")
    convnet.fit(np.zeros((4, 28, 28, 1), "float32"), np.zeros((4, 10), "float32"), verbose=0)
    assert convnet._trainer.inference_batch_size == 256
