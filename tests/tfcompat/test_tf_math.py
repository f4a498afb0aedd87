"""tf.math, the array functions, tf.Variable and tf.print, against the values (and dtypes) TensorFlow
gives; and a program in the style of TensorFlow's "advanced quickstart"."""

import logging
import math
import sys

import numpy as np
import pytest
import torch

import hpctrain as tf


def values(tensor):
    return tf.keras.ops.convert_to_numpy(tensor).tolist()


def close(tensor, expected, tol=1e-6):
    return np.allclose(tf.keras.ops.convert_to_numpy(tensor), expected, atol=tol, rtol=tol)


# ---- creation ------------------------------------------------------------------------------


def test_range_dtypes_and_values():
    assert values(tf.range(5)) == [0, 1, 2, 3, 4]
    assert tf.range(5).dtype == torch.int32
    assert values(tf.range(3, 18, 3)) == [3, 6, 9, 12, 15]
    assert values(tf.range(5, 1, -2)) == [5, 3]
    assert tf.range(1, 2, 0.25).dtype == torch.float32
    assert values(tf.range(1, 2, 0.25)) == [1.0, 1.25, 1.5, 1.75]
    assert tf.range(3, dtype=tf.float64).dtype == torch.float64
    assert tf.range(tf.constant(4, dtype=tf.int64)).dtype == torch.int64


def test_zeros_ones_fill_eye():
    assert tf.zeros([2, 3]).dtype == torch.float32
    assert values(tf.zeros([2, 3])) == [[0.0] * 3] * 2
    assert values(tf.ones(3, dtype=tf.int32)) == [1, 1, 1]
    assert tf.ones(3, dtype=tf.int32).dtype == torch.int32
    assert tf.zeros(tf.shape(np.zeros((2, 2)))).shape == (2, 2)
    ints = tf.constant([[1, 2], [3, 4]])
    assert tf.zeros_like(ints).dtype == torch.int32
    assert values(tf.ones_like(ints)) == [[1, 1], [1, 1]]
    assert tf.ones_like(ints, dtype=tf.float32).dtype == torch.float32
    assert values(tf.fill([2, 3], 9)) == [[9, 9, 9], [9, 9, 9]]
    assert tf.fill([2], 9).dtype == torch.int32
    assert tf.fill([2], 0.5).dtype == torch.float32
    assert values(tf.eye(2, 3)) == [[1, 0, 0], [0, 1, 0]]
    assert tf.eye(2, batch_shape=[4]).shape == (4, 2, 2)


# ---- shapes --------------------------------------------------------------------------------


def test_newaxis_reshape_expand_dims_squeeze():
    images = np.zeros((5, 28, 28), dtype=np.float32)
    assert tf.newaxis is None
    assert images[..., tf.newaxis].shape == (5, 28, 28, 1)
    t = tf.constant([[1, 2, 3], [4, 5, 6]])
    assert values(tf.reshape(t, [3, 2])) == [[1, 2], [3, 4], [5, 6]]
    assert values(tf.reshape(t, [-1])) == [1, 2, 3, 4, 5, 6]
    assert tf.reshape(t, tf.constant([3, -1])).shape == (3, 2)
    assert tf.expand_dims(t, 0).shape == (1, 2, 3)
    assert tf.expand_dims(t, -1).shape == (2, 3, 1)
    assert tf.squeeze(np.zeros((1, 2, 1, 3, 1))).shape == (2, 3)
    assert tf.squeeze(np.zeros((1, 2, 1, 3, 1)), axis=[2, 4]).shape == (1, 2, 3)
    with pytest.raises(ValueError) as error:
        tf.squeeze(np.zeros((1, 2)), axis=1)
    assert str(error.value) == "Can not squeeze dim[1], expected a dimension of 1, got 2"


def test_concat_stack_unstack_split():
    a, b = [[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]
    assert values(tf.concat([a, b], 0)) == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]
    assert values(tf.concat([a, b], axis=1)) == [[1, 2, 3, 7, 8, 9], [4, 5, 6, 10, 11, 12]]
    with pytest.raises(TypeError):
        tf.concat([a, b])  # axis is required, as in TensorFlow
    assert values(tf.stack([[1, 4], [2, 5], [3, 6]])) == [[1, 4], [2, 5], [3, 6]]
    assert values(tf.stack([[1, 4], [2, 5], [3, 6]], axis=1)) == [[1, 2, 3], [4, 5, 6]]
    rows = tf.unstack(tf.constant(a))
    assert isinstance(rows, list) and [values(r) for r in rows] == [[1, 2, 3], [4, 5, 6]]
    assert [values(c) for c in tf.unstack(tf.constant(a), axis=1)] == [[1, 4], [2, 5], [3, 6]]
    x = tf.reshape(tf.range(10), [1, 10])
    assert [values(p) for p in tf.split(x, 2, axis=1)] == [[[0, 1, 2, 3, 4]], [[5, 6, 7, 8, 9]]]
    assert [p.shape[1] for p in tf.split(x, [4, 4, 2], 1)] == [4, 4, 2]
    assert [p.shape[1] for p in tf.split(x, [3, -1, 2], 1)] == [3, 5, 2]
    with pytest.raises(ValueError):
        tf.split(x, 3, axis=1)


def test_transpose_tile_pad_broadcast():
    x = tf.constant([[1, 2, 3], [4, 5, 6]])
    assert values(tf.transpose(x)) == [[1, 4], [2, 5], [3, 6]]
    assert tf.transpose(np.zeros((2, 3, 4))).shape == (4, 3, 2)
    assert tf.transpose(np.zeros((2, 3, 4)), perm=[0, 2, 1]).shape == (2, 4, 3)
    assert values(tf.tile([[1, 2]], [2, 2])) == [[1, 2, 1, 2], [1, 2, 1, 2]]
    t = [[1, 2, 3], [4, 5, 6]]
    paddings = [[1, 1], [2, 2]]
    assert values(tf.pad(t, paddings)) == [[0, 0, 0, 0, 0, 0, 0], [0, 0, 1, 2, 3, 0, 0], [0, 0, 4, 5, 6, 0, 0],
                                           [0, 0, 0, 0, 0, 0, 0]]
    assert values(tf.pad(t, paddings, "REFLECT")) == [[6, 5, 4, 5, 6, 5, 4], [3, 2, 1, 2, 3, 2, 1],
                                                      [6, 5, 4, 5, 6, 5, 4], [3, 2, 1, 2, 3, 2, 1]]
    assert values(tf.pad(t, paddings, "SYMMETRIC")) == [[2, 1, 1, 2, 3, 3, 2], [2, 1, 1, 2, 3, 3, 2],
                                                        [5, 4, 4, 5, 6, 6, 5], [5, 4, 4, 5, 6, 6, 5]]
    assert values(tf.pad([1, 2], [[1, 0]], constant_values=7)) == [7, 1, 2]
    assert values(tf.broadcast_to([1, 2, 3], [2, 3])) == [[1, 2, 3], [1, 2, 3]]


def test_size_and_rank_are_int32_scalars():
    t = np.zeros((2, 2, 3))
    assert tf.size(t).dtype == torch.int32 and int(tf.size(t)) == 12
    assert tf.size(t, out_type=tf.int64).dtype == torch.int64
    assert tf.rank(t).dtype == torch.int32 and int(tf.rank(t)) == 3
    assert tf.rank(tf.constant(1.0)).shape == ()


# ---- selection -----------------------------------------------------------------------------


def test_gather_boolean_mask_where():
    params = tf.constant([[1, 2, 3], [4, 5, 6]])
    assert values(tf.gather([10, 20, 30, 40], [3, 0, 0])) == [40, 10, 10]
    assert values(tf.gather(params, [1])) == [[4, 5, 6]]
    assert values(tf.gather(params, [2, 0], axis=1)) == [[3, 1], [6, 4]]
    assert values(tf.boolean_mask([0, 1, 2, 3], [True, False, True, False])) == [0, 2]
    assert values(tf.boolean_mask([[1, 2], [3, 4], [5, 6]], [True, False, True])) == [[1, 2], [5, 6]]
    assert values(tf.boolean_mask(params, [True, False, True], axis=1)) == [[1, 3], [4, 6]]
    cube = tf.reshape(tf.range(12), [2, 3, 2])
    mask = [[True, False, True], [False, True, False]]
    assert values(tf.boolean_mask(cube, mask)) == [[0, 1], [4, 5], [8, 9]]
    coordinates = tf.where([[True, False], [False, True]])
    assert coordinates.dtype == torch.int64 and values(coordinates) == [[0, 0], [1, 1]]
    assert values(tf.where([True, False, True], [1, 2, 3], [10, 20, 30])) == [1, 20, 3]
    assert values(tf.where([[True], [False]], 1.0, [5.0, 6.0])) == [[1.0, 1.0], [5.0, 6.0]]
    with pytest.raises(ValueError) as error:
        tf.where([True], [1])
    assert str(error.value) == "x and y must both be non-None or both be None."


def test_sort_argsort_unique():
    assert values(tf.sort([1, 10, 26.7, 2.8, 2.8])) == pytest.approx([1, 2.8, 2.8, 10, 26.7])
    assert values(tf.sort([[3, 1], [0, 2]], axis=0)) == [[0, 1], [3, 2]]
    assert values(tf.sort([1, 3, 2], direction="DESCENDING")) == [3, 2, 1]
    order = tf.argsort([1, 10, 26.7, 2.8, 2.8])
    assert order.dtype == torch.int32 and values(order) == [0, 3, 4, 1, 2]
    assert values(tf.argsort([3, 1, 3, 2], direction="DESCENDING")) == [0, 2, 3, 1]
    with pytest.raises(ValueError):
        tf.sort([1], direction="UP")
    y, idx = tf.unique([1, 1, 2, 4, 4, 4, 7, 8, 8])
    assert values(y) == [1, 2, 4, 7, 8] and values(idx) == [0, 0, 1, 2, 2, 2, 3, 4, 4]
    y, idx = tf.unique([5, 3, 5, 1])
    assert values(y) == [5, 3, 1] and values(idx) == [0, 1, 0, 2]  # order of first appearance
    assert idx.dtype == torch.int32


# ---- element-wise math -----------------------------------------------------------------------


def test_unary_math():
    assert close(tf.exp([0.0, 1.0]), [1.0, math.e])
    assert close(tf.math.log([1.0, math.e]), [0.0, 1.0])
    assert tf.math.log is tf.math.log and tf.exp is tf.math.exp
    assert values(tf.sqrt([4.0, 9.0])) == [2.0, 3.0]
    assert values(tf.square([-3, 2])) == [9, 4]
    assert tf.square([-3, 2]).dtype == torch.int32
    assert values(tf.abs([-1.5, 2.0])) == [1.5, 2.0]
    assert values(tf.sign([-2.0, 0.0, 3.0])) == [-1.0, 0.0, 1.0]
    assert values(tf.round([0.5, 1.5, 2.5, -1.5, 1.2])) == [0.0, 2.0, 2.0, -2.0, 1.0]  # halves to even
    assert values(tf.floor([-1.5, 1.5])) == [-2.0, 1.0]
    assert values(tf.math.ceil([-1.5, 1.5])) == [-1.0, 2.0]
    assert values(tf.math.is_nan([1.0, float("nan")])) == [False, True]
    assert values(tf.math.is_finite([1.0, float("inf"), float("nan")])) == [True, False, False]
    assert close(tf.math.sigmoid([0.0]), [0.5])
    assert close(tf.math.log1p([0.0]), [0.0])
    assert values(tf.math.reciprocal([2.0, 4.0])) == [0.5, 0.25]
    assert values(tf.negative([1, -2])) == [-1, 2]


def test_binary_math_broadcasts():
    assert values(tf.add([1, 2], 10)) == [11, 12]
    assert tf.add([1, 2], 10).dtype == torch.int32
    assert values(tf.subtract([[5], [7]], [1, 2])) == [[4, 3], [6, 5]]
    assert values(tf.multiply(tf.constant([1.5, 2.0]), 2)) == [3.0, 4.0]
    assert values(tf.pow([2, 3], 2)) == [4, 9]
    assert values(tf.pow(2.0, [0.5, 3.0])) == pytest.approx([math.sqrt(2), 8.0])
    assert values(tf.maximum([1, 5], [3, 2])) == [3, 5]
    assert values(tf.minimum([1.0, 5.0], 2.0)) == [1.0, 2.0]
    assert values(tf.math.floordiv([7, -7], 2)) == [3, -4]
    assert values(tf.math.floormod([7, -7], 3)) == [1, 2]
    assert values(tf.math.squared_difference([1.0, 4.0], 2.0)) == [1.0, 4.0]
    assert values(tf.math.add_n([[1, 2], [3, 4], [5, 6]])) == [9, 12]


def test_divide_gives_tensorflows_dtypes():
    quotient = tf.divide(tf.constant([1, 3]), tf.constant([2, 2]))
    assert quotient.dtype == torch.float64 and values(quotient) == [0.5, 1.5]  # int32 / int32 -> float64
    assert tf.divide(tf.constant([1], dtype=tf.int16), 2).dtype == torch.float32
    assert tf.divide([1.0, 3.0], 2.0).dtype == torch.float32
    assert tf.math.truediv is tf.divide
    assert values(tf.math.divide_no_nan([1.0, 2.0], [0.0, 4.0])) == [0.0, 0.5]


def test_comparisons_and_logic():
    x, y = [1, 2, 3], [3, 2, 1]
    assert values(tf.equal(x, y)) == [False, True, False]
    assert values(tf.not_equal(x, y)) == [True, False, True]
    assert values(tf.less(x, y)) == [True, False, False]
    assert values(tf.less_equal(x, y)) == [True, True, False]
    assert values(tf.greater(x, y)) == [False, False, True]
    assert values(tf.greater_equal(x, 2)) == [False, True, True]
    assert tf.equal(x, y).dtype == torch.bool
    a, b = [True, True, False], [True, False, False]
    assert values(tf.logical_and(a, b)) == [True, False, False]
    assert values(tf.logical_or(a, b)) == [True, True, False]
    assert values(tf.logical_not(a)) == [False, False, True]
    assert values(tf.math.logical_xor(a, b)) == [False, True, False]


def test_clip_by_value():
    t = tf.constant([[-10.0, -1.0, 0.0], [0.0, 2.0, 10.0]])
    assert values(tf.clip_by_value(t, clip_value_min=-1, clip_value_max=1)) == [[-1, -1, 0], [0, 1, 1]]
    assert values(tf.clip_by_value([1, 5, 9], 2, 8)) == [2, 5, 8]


def test_matmul():
    a = tf.constant([[1, 2, 3], [4, 5, 6]])
    b = tf.constant([[7, 8], [9, 10], [11, 12]])
    assert values(tf.matmul(a, b)) == [[58, 64], [139, 154]]
    assert tf.matmul(a, b).dtype == torch.int32
    assert values(tf.matmul(a, a, transpose_b=True)) == [[14, 32], [32, 77]]
    assert values(tf.matmul(b, b, transpose_a=True)) == [[251, 278], [278, 308]]
    batched = tf.matmul(np.ones((4, 2, 3), np.float32), np.ones((4, 3, 5), np.float32))
    assert batched.shape == (4, 2, 5) and values(batched)[3][1][4] == 3.0
    with pytest.raises(ValueError):
        tf.matmul(a, a, transpose_a=True, adjoint_a=True)


# ---- reductions ----------------------------------------------------------------------------


def test_reductions():
    x = tf.constant([[1, 2], [3, 4]])
    assert values(tf.reduce_prod(x)) == 24 and tf.reduce_prod(x).dtype == torch.int32
    assert values(tf.reduce_prod(x, 1)) == [2, 12]
    assert values(tf.reduce_prod(x, 0, keepdims=True)) == [[3, 8]]
    flags = [[True, True], [False, False]]
    assert values(tf.reduce_any(flags)) is True
    assert values(tf.reduce_all(flags)) is False
    assert values(tf.reduce_any(flags, 0)) == [True, True]
    assert values(tf.reduce_all(flags, axis=1)) == [True, False]
    floats = tf.constant([[1.0, 2.0], [3.0, 4.0]])
    assert close(tf.math.reduce_std(floats), 1.118034)  # population std: sqrt(1.25)
    assert close(tf.math.reduce_std(floats, 0), [1.0, 1.0])
    assert close(tf.math.reduce_variance(floats), 1.25)
    assert close(tf.math.reduce_variance(floats, 1), [0.25, 0.25])
    assert close(tf.reduce_logsumexp([0.0, 0.0]), math.log(2))
    assert tf.math.reduce_mean is tf.reduce_mean and tf.math.reduce_sum is tf.reduce_sum
    assert values(tf.math.argmax([[1, 9], [5, 2]])) == [1, 0]
    count = tf.math.count_nonzero([0, 1, 0, 3])
    assert count.dtype == torch.int64 and values(count) == 2
    assert values(tf.cumsum([1, 2, 3])) == [1, 3, 6]
    assert values(tf.math.cumsum([1, 2, 3], exclusive=True)) == [0, 1, 3]
    assert values(tf.math.cumsum([1, 2, 3], reverse=True)) == [6, 5, 3]
    assert values(tf.math.cumsum([1, 2, 3], exclusive=True, reverse=True)) == [5, 3, 0]


def test_top_k():
    result = tf.math.top_k([1, 3, 3, 2, 5], k=3)
    assert values(result.values) == [5, 3, 3]
    assert values(result.indices) == [4, 1, 2]  # the lower index first among equal values
    assert result.indices.dtype == torch.int32
    values_, indices = tf.math.top_k([[0.1, 0.9, 0.5], [0.7, 0.2, 0.3]])
    assert values(indices) == [[1], [0]] and close(values_, [[0.9], [0.7]])


def test_confusion_matrix():
    matrix = tf.math.confusion_matrix([1, 2, 4], [2, 2, 4])
    assert matrix.dtype == torch.int32
    assert values(matrix) == [[0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0],
                              [0, 0, 0, 0, 1]]
    rows_are_labels = tf.math.confusion_matrix([0, 0, 1], [1, 1, 1], num_classes=3)
    assert values(rows_are_labels) == [[0, 2, 0], [0, 1, 0], [0, 0, 0]]
    weighted = tf.math.confusion_matrix([0, 1], [0, 0], num_classes=2, weights=[0.5, 2.0], dtype=tf.float32)
    assert values(weighted) == [[0.5, 0.0], [2.0, 0.0]]
    with pytest.raises(ValueError):
        tf.math.confusion_matrix([0, 3], [0, 0], num_classes=3)
    with pytest.raises(ValueError):
        tf.math.confusion_matrix([-1], [0])


def test_results_of_a_model_output_keep_numpy_and_gradients():
    layer = tf.keras.layers.Dense(2, kernel_initializer="ones")
    model = tf.keras.Sequential([tf.keras.Input((3,)), layer])
    out = model(np.ones((1, 3), np.float32))
    for result in (tf.exp(out), tf.reshape(out, [-1]), tf.matmul(out, out, transpose_b=True),
                   tf.math.top_k(out).values, tf.concat([out, out], 0)):
        assert isinstance(result.numpy(), np.ndarray)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(tf.reshape(model(np.ones((1, 3), np.float32)), [-1])))
    kernel_grad = tape.gradient(loss, layer.kernel)
    assert values(kernel_grad) == [[6.0, 6.0]] * 3  # d/dw sum((x.w)^2) = 2 * 3 * x


# ---- Variable, print, logger ---------------------------------------------------------------


def test_variable_has_tensorflows_signature():
    v = tf.Variable([1.0, 2.0], name="weights")
    assert isinstance(v, tf.keras.Variable) and v.dtype == "float32" and v.trainable
    assert v.name == "weights"
    assert v.assign([3.0, 4.0]) is v and values(v.numpy()) == [3.0, 4.0]
    v.assign_add([1.0, 1.0])
    v.assign_sub([0.5, 0.5])
    assert v.numpy().tolist() == [3.5, 4.5]
    assert tf.Variable(1).dtype == "int32" and not tf.Variable(1).trainable
    assert tf.Variable(np.zeros(2)).dtype == "float64"
    assert tf.Variable(3, dtype=tf.float32).dtype == "float32"
    assert not tf.Variable(1.0, trainable=False).trainable
    assert tf.Variable(lambda: tf.zeros([2])).shape == (2,)
    w = tf.Variable(3.0)
    with tf.GradientTape() as tape:
        y = tf.multiply(w, w)
    assert float(tape.gradient(y, w)) == 6.0
    assert float(y.numpy()) == 9.0


def test_variable_trains_with_a_keras_optimizer():
    w = tf.Variable([1.0, -2.0])
    optimizer = tf.keras.optimizers.SGD(learning_rate=0.25)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(w))
    optimizer.apply_gradients([(tape.gradient(loss, w), w)])
    assert w.numpy().tolist() == [0.5, -1.0]  # w - 0.25 * 2w


def test_print_writes_tensors_by_value(capsys):
    tf.print(tf.constant([[1, 2], [3, 4]]))
    tf.print("loss:", tf.constant(0.1), "step", 3)
    tf.print(tf.range(10))
    tf.print(tf.range(10), summarize=-1)
    tf.print(tf.constant([1.0, 2.5, 1 / 3]), tf.Variable(2.0))
    tf.print("to stdout", output_stream=sys.stdout)
    tf.print("a", "b", sep=",", end="!\n")
    captured = capsys.readouterr()
    assert captured.err == ("[[1 2]\n [3 4]]\n"
                            "loss: 0.1 step 3\n"
                            "[0 1 2 ... 7 8 9]\n"
                            "[0 1 2 3 4 5 6 7 8 9]\n"
                            "[1 2.5 0.333333343] 2\n"
                            "a,b!\n")
    assert captured.out == "to stdout\n"


def test_print_to_a_file(tmp_path):
    target = tmp_path / "log.txt"
    tf.print("x", tf.constant([5, 6]), output_stream=f"file://{target}")
    assert target.read_text() == "x [5 6]\n"


def test_get_logger_is_the_tensorflow_logger():
    assert tf.get_logger() is logging.getLogger("tensorflow")


# ---- names left out --------------------------------------------------------------------------


@pytest.mark.parametrize("name, message", [
    ("reduce_std", "hpctrain has no tf.reduce_std; use tf.math.reduce_std."),
    ("log1p", "hpctrain has no tf.log1p; use tf.math.log1p."),
    ("einsum", "hpctrain has no tf.einsum; use keras.ops.einsum (or torch.einsum)."),
    ("reverse", "hpctrain has no tf.reverse; use keras.ops.flip (or torch.flip)."),
])
def test_missing_names_point_at_tf_math_or_keras_ops(name, message):
    with pytest.raises(AttributeError) as error:
        getattr(tf, name)
    assert str(error.value) == message


def test_missing_tf_math_names():
    with pytest.raises(AttributeError) as error:
        tf.math.segment_sum
    assert str(error.value) == "hpctrain has no tf.math.segment_sum; use keras.ops.segment_sum."
    with pytest.raises(AttributeError) as error:
        tf.math.bessel_i0
    assert str(error.value) == "hpctrain has no tf.math.bessel_i0; use keras.ops (https://keras.io/api/ops/)."


# ---- a program in the style of TensorFlow's "advanced quickstart" -----------------------------


def _synthetic_digits(rng, count):
    """Images of 10 classes: a fixed random pattern per class plus noise, shaped (count, 8, 8) as
    MNIST's are (count, 28, 28)."""
    patterns = np.random.default_rng(0).uniform(0, 255, size=(10, 8, 8))
    labels = rng.integers(0, 10, size=count).astype(np.uint8)
    images = patterns[labels] + rng.normal(0, 40, size=(count, 8, 8))
    return np.clip(images, 0, 255).astype(np.uint8), labels


def test_advanced_quickstart_style_program_trains(capsys):
    Conv2D, Dense, Flatten = tf.keras.layers.Conv2D, tf.keras.layers.Dense, tf.keras.layers.Flatten
    tf.random.set_seed(7)
    rng = np.random.default_rng(1)
    (x_train, y_train), (x_test, y_test) = _synthetic_digits(rng, 256), _synthetic_digits(rng, 64)
    x_train, x_test = x_train / 255.0, x_test / 255.0
    x_train = x_train[..., tf.newaxis].astype("float32")
    x_test = x_test[..., tf.newaxis].astype("float32")
    train_ds = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(10000).batch(32)
    test_ds = tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(32)

    class MyModel(tf.keras.Model):
        def __init__(self):
            super().__init__()
            self.conv1 = Conv2D(8, 3, activation="relu")
            self.flatten = Flatten()
            self.d1 = Dense(32, activation="relu")
            self.d2 = Dense(10)

        def call(self, x):
            return self.d2(self.d1(self.flatten(self.conv1(x))))

    model = MyModel()
    loss_object = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = tf.keras.optimizers.Adam()
    train_loss = tf.keras.metrics.Mean(name="train_loss")
    train_accuracy = tf.keras.metrics.SparseCategoricalAccuracy(name="train_accuracy")
    test_loss = tf.keras.metrics.Mean(name="test_loss")
    test_accuracy = tf.keras.metrics.SparseCategoricalAccuracy(name="test_accuracy")

    @tf.function
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            predictions = model(images, training=True)
            loss = loss_object(labels, predictions)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        train_loss(loss)
        train_accuracy(labels, predictions)

    @tf.function
    def test_step(images, labels):
        predictions = model(images, training=False)
        test_loss(loss_object(labels, predictions))
        test_accuracy(labels, predictions)

    history = []
    for epoch in range(2):
        for metric in (train_loss, train_accuracy, test_loss, test_accuracy):
            metric.reset_state()
        for images, labels in train_ds:
            train_step(images, labels)
        for test_images, test_labels in test_ds:
            test_step(test_images, test_labels)
        print(f"Epoch {epoch + 1}, Loss: {train_loss.result():0.2f}, "
              f"Accuracy: {train_accuracy.result() * 100:0.2f}, Test Loss: {test_loss.result():0.2f}, "
              f"Test Accuracy: {test_accuracy.result() * 100:0.2f}")
        history.append([float(m.result()) for m in (train_loss, train_accuracy, test_loss, test_accuracy)])

    (loss1, acc1, test_loss1, test_acc1), (loss2, acc2, test_loss2, test_acc2) = history
    assert all(math.isfinite(v) for v in history[0] + history[1])
    assert loss2 < loss1 and test_loss2 < test_loss1
    assert acc2 > acc1 and 0.0 <= acc1 <= 1.0 and 0.0 <= test_acc2 <= 1.0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1] == (f"Epoch 2, Loss: {loss2:0.2f}, Accuracy: {acc2 * 100:0.2f}, "
                          f"Test Loss: {test_loss2:0.2f}, Test Accuracy: {test_acc2 * 100:0.2f}")


def test_nn_top_k_l2_normalize_and_random_shuffle():
    assert values(tf.nn.top_k([1, 4, 2], k=2).indices) == [1, 2]
    assert close(tf.nn.l2_normalize([3.0, 4.0]), [0.6, 0.8])
    assert close(tf.math.l2_normalize([[3.0, 4.0], [1.0, 0.0]], axis=1), [[0.6, 0.8], [1.0, 0.0]])
    tf.random.set_seed(3)
    rows = tf.random.shuffle(tf.reshape(tf.range(12), [6, 2]))
    assert rows.dtype == torch.int32 and rows.shape == (6, 2)
    assert sorted(values(rows)) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11]]  # whole rows move


def test_identity_of_a_variable_is_a_snapshot():
    v = tf.Variable([1.0, 2.0])
    snapshot = tf.identity(v)
    v.assign([5.0, 6.0])
    assert snapshot.numpy().tolist() == [1.0, 2.0]
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(tf.multiply(tf.identity(v), 3.0))
    assert values(tape.gradient(total, v)) == [3.0, 3.0]
