"""tf.constant, tf.one_hot, tf.reduce_*, tf.cast, dtypes, tf.nn and tf.random, against the values
TensorFlow gives."""

import numpy as np
import pytest
import torch

import hpctrain as tf


def numpy_of(tensor):
    """A tensor as NumPy, wherever Keras placed it (the GPU, on a machine with one)."""
    return tf.keras.ops.convert_to_numpy(tensor)


def values(tensor):
    return numpy_of(tensor).tolist()


def test_dtypes_are_keras_dtype_strings():
    assert [tf.float32, tf.float64, tf.int32, tf.int64, tf.bool, tf.uint8, tf.float16, tf.bfloat16] == [
        "float32", "float64", "int32", "int64", "bool", "uint8", "float16", "bfloat16"]
    assert repr(tf.float32) == "tf.float32"
    assert tf.float32.name == "float32"
    assert (tf.float16.is_floating, tf.int64.is_integer, tf.bool.is_bool, tf.int32.is_floating) == (True, True, True, False)
    assert (tf.float64.size, tf.bfloat16.size, tf.uint8.size) == (8, 2, 1)
    assert tf.int64.as_numpy_dtype is np.int64
    assert tf.bfloat16.torch_dtype is torch.bfloat16
    assert tf.as_dtype(torch.int32) is tf.int32
    assert tf.as_dtype(np.float64) is tf.float64
    layer = tf.keras.layers.Dense(2, dtype=tf.float64)
    assert layer.dtype == "float64"
    with pytest.raises(TypeError) as error:
        tf.as_dtype("complex256")
    assert str(error.value).startswith("Cannot convert 'complex256' to a dtype")


def test_constant_infers_dtypes_as_tensorflow():
    assert tf.constant([1.5, 2.0]).dtype == torch.float32
    assert tf.constant([1, 2]).dtype == torch.int32
    assert tf.constant(np.array([1.0, 2.0])).dtype == torch.float64
    assert tf.constant(np.array([1, 2], dtype=np.int64)).dtype == torch.int64
    assert tf.constant([True, False]).dtype == torch.bool
    assert values(tf.constant(7, shape=(2, 3))) == [[7, 7, 7], [7, 7, 7]]
    assert values(tf.constant([1, 2, 3, 4], shape=[2, 2])) == [[1, 2], [3, 4]]
    assert values(tf.constant([1, 2], dtype=tf.float64)) == [1.0, 2.0]
    assert tf.constant([1, 2], dtype=tf.float64).dtype == torch.float64
    assert numpy_of(tf.constant([1.0, 2.0])).tolist() == [1.0, 2.0]
    with pytest.raises(TypeError):
        tf.constant([1, 2, 3], shape=(2, 2))


def test_convert_to_tensor():
    assert tf.convert_to_tensor([1, 2]).dtype == torch.int32
    assert tf.convert_to_tensor([1, 2], dtype_hint=tf.float32).dtype == torch.float32
    assert tf.convert_to_tensor(np.array([1, 2], dtype=np.int64), dtype_hint=tf.float32).dtype == torch.int64
    assert values(tf.convert_to_tensor([[1.0, 2.0]], dtype=tf.float16)) == [[1.0, 2.0]]


def test_cast_truncates_toward_zero():
    assert values(tf.cast([1.7, -1.7, 2.5], tf.int32)) == [1, -1, 2]
    assert tf.cast([1, 2], tf.float32).dtype == torch.float32
    assert values(tf.cast([0.0, 3.0], tf.bool)) == [False, True]
    assert values(tf.cast(np.array([300]), tf.uint8)) == [44]  # wraps modulo 256, as TensorFlow's


def test_shape_is_an_int32_tensor():
    shape = tf.shape(np.zeros((2, 3, 5)))
    assert shape.dtype == torch.int32
    assert values(shape) == [2, 3, 5]
    assert int(tf.shape(np.zeros((4, 1)))[0]) == 4
    assert tf.shape(np.zeros(3), out_type=tf.int64).dtype == torch.int64


def test_one_hot():
    assert values(tf.one_hot([0, 2, -1, 3], 3)) == [[1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]]
    assert tf.one_hot([1], 2).dtype == torch.float32
    assert values(tf.one_hot([1, 0], 2, on_value=5, off_value=-1)) == [[-1, 5], [5, -1]]
    assert tf.one_hot([1, 0], 2, on_value=5, off_value=-1).dtype == torch.int32
    assert values(tf.one_hot([0, 1], 3, axis=0)) == [[1, 0], [0, 1], [0, 0]]
    assert values(tf.one_hot([[0], [2]], 3, dtype=tf.int64)) == [[[1, 0, 0]], [[0, 0, 1]]]


def test_argmax_defaults_to_axis_0_and_int64():
    x = [[1, 9, 3], [4, 2, 8]]
    assert values(tf.argmax(x)) == [1, 0, 1]
    assert tf.argmax(x).dtype == torch.int64
    assert values(tf.argmax(x, axis=1)) == [1, 2]
    assert tf.argmax(x, axis=1, output_type=tf.int32).dtype == torch.int32
    assert values(tf.argmin(x, axis=-1)) == [0, 1]


def test_reductions():
    x = np.array([[1.0, 2.0, 6.0], [3.0, 4.0, 8.0]], dtype=np.float32)
    assert float(tf.reduce_mean(x)) == 4.0
    assert values(tf.reduce_mean(x, axis=0)) == [2.0, 3.0, 7.0]
    assert values(tf.reduce_mean(x, axis=1, keepdims=True)) == [[3.0], [5.0]]
    assert values(tf.reduce_sum(x, axis=[0, 1])) == 24.0
    assert values(tf.reduce_sum(x, 1)) == [9.0, 15.0]
    assert values(tf.reduce_max(x, axis=0)) == [3.0, 4.0, 8.0]
    assert values(tf.reduce_min(x, axis=1, keepdims=True)) == [[1.0], [3.0]]
    ints = np.array([1, 2, 4], dtype=np.int32)
    assert values(tf.reduce_mean(ints)) == 2  # 7 // 3, integer as in TensorFlow
    assert tf.reduce_mean(ints).dtype == torch.int32
    assert tf.reduce_sum(ints).dtype == torch.int32


@pytest.mark.parametrize("name, x, expected", [
    ("relu", [-1.0, 2.0], [0.0, 2.0]),
    ("sigmoid", [0.0], [0.5]),
    ("tanh", [1.0], [0.7615941559557649]),
    ("softmax", [1.0, 2.0, 3.0], [0.09003057317038046, 0.24472847105479764, 0.6652409557748219]),
    ("log_softmax", [1.0, 2.0, 3.0], [-2.40760596444438, -1.4076059644443801, -0.4076059644443803]),
    ("gelu", [1.0, -1.0], [0.8413447460685429, -0.15865525393145707]),  # exact (erf) by default
    ("elu", [-1.0, 2.0], [-0.6321205588285577, 2.0]),
    ("selu", [1.0, -1.0], [1.0507009873554805, -1.1113307378125628]),
    ("softplus", [0.0, 1.0], [0.6931471805599453, 1.3132616875182228]),
    ("leaky_relu", [-1.0, 3.0], [-0.2, 3.0]),
    ("silu", [1.0, -2.0], [0.7310585786300049, -0.23840584404423515]),
    ("swish", [1.0], [0.7310585786300049]),
])
def test_nn_activations(name, x, expected):
    result = getattr(tf.nn, name)(np.array(x, dtype=np.float64))
    np.testing.assert_allclose(numpy_of(result), expected, rtol=1e-7, atol=1e-12)


def test_nn_arguments_with_tensorflow_names():
    np.testing.assert_allclose(numpy_of(tf.nn.gelu(np.array([1.0]), approximate=True)), [0.8411919906082768], rtol=1e-7)
    np.testing.assert_allclose(numpy_of(tf.nn.leaky_relu(np.array([-1.0]), alpha=0.1)), [-0.1], rtol=1e-7)
    np.testing.assert_allclose(numpy_of(tf.nn.silu(np.array([1.0]), beta=2.0)), [0.8807970779778823], rtol=1e-7)
    np.testing.assert_allclose(numpy_of(tf.nn.softmax(np.array([[1.0, 1.0], [0.0, 0.0]]), axis=0)),
                               [[0.7310585786300049] * 2, [0.2689414213699951] * 2], rtol=1e-7)


def test_random_set_seed_repeats_draws():
    tf.random.set_seed(7)
    first = (tf.random.normal([3]), tf.random.uniform([2, 2]), np.random.rand())
    tf.random.set_seed(7)
    second = (tf.random.normal([3]), tf.random.uniform([2, 2]), np.random.rand())
    assert values(first[0]) == values(second[0])
    assert values(first[1]) == values(second[1])
    assert first[2] == second[2]
    import keras

    assert keras.src.utils.rng_utils.get_random_seed() == 7


def test_random_distributions():
    tf.random.set_seed(3)
    normal = numpy_of(tf.random.normal([20000], mean=2.0, stddev=0.5))
    assert normal.dtype == np.float32
    assert abs(normal.mean() - 2.0) < 0.02 and abs(normal.std() - 0.5) < 0.02
    uniform = numpy_of(tf.random.uniform([20000], minval=-1.0, maxval=3.0))
    assert uniform.min() >= -1.0 and uniform.max() < 3.0 and abs(uniform.mean() - 1.0) < 0.05
    unit = numpy_of(tf.random.uniform([1000]))
    assert unit.min() >= 0.0 and unit.max() < 1.0
    ints = numpy_of(tf.random.uniform([1000], minval=2, maxval=5, dtype=tf.int32))
    assert ints.dtype == np.int32 and sorted(set(ints.tolist())) == [2, 3, 4]
    with pytest.raises(ValueError) as error:
        tf.random.uniform([2], dtype=tf.int64)
    assert str(error.value) == "Must specify maxval for integer dtype int64"
    assert numpy_of(tf.random.normal([2], dtype=tf.float64)).dtype == np.float64


def test_config_device_queries_come_from_torch():
    gpus = tf.config.list_physical_devices("GPU")
    assert len(gpus) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert tf.config.list_physical_devices("CPU") == [("/physical_device:CPU:0", "CPU")]
    assert tf.config.list_physical_devices()[0].device_type == "CPU"
    assert tf.config.list_logical_devices("CPU")[0].name == "/device:CPU:0"
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    assert tf.config.experimental.get_memory_growth(None) is True
    tf.config.run_functions_eagerly(False)
    assert tf.config.functions_run_eagerly() is True
    with pytest.raises(AttributeError) as error:
        tf.config.set_logical_device_configuration
    assert str(error.value) == ("hpctrain has no tf.config.set_logical_device_configuration; use keras.config, or torch "
                                "(torch.set_num_threads, torch.cuda) for device settings.")


def test_tf_ops_on_a_model_output_give_numpy_and_keep_the_graph():
    """``tf.nn.softmax(model(x)).numpy()`` works as on TensorFlow; inside a tape the graph is kept."""
    model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2)])
    x = np.ones((4, 3), dtype="float32")
    probabilities = tf.nn.softmax(model(x)).numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), np.ones(4), rtol=1e-6)
    assert float(tf.reduce_mean(tf.cast(model(x), "float32")).numpy()) == pytest.approx(float(model(x).numpy().mean()))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.nn.relu(model(x)) + 1.0)
    gradients = tape.gradient(loss, model.trainable_weights)
    assert all(g is not None for g in gradients)
