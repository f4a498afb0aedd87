"""Real MNIST (10k train, 10k test bundled): the Keras tutorial MLP reaches Keras's accuracy."""

import pytest

import hpctrain as tf
from conftest import MNIST_DIR
from hpctrain.keras.layers import Dense
from hpctrain.keras.models import Sequential
from hpctrain.keras.optimizers import Adam


@pytest.fixture(scope="module")
def mnist():
    (x_train, y_train), (x_test, y_test) = tf.keras.datasets.mnist.load_data(path=MNIST_DIR)
    return ((x_train.reshape(-1, 784) / 255.0).astype("float32"), y_train,
            (x_test.reshape(-1, 784) / 255.0).astype("float32"), y_test)


def test_bundled_mnist_has_the_documented_shape(mnist):
    x_train, y_train, x_test, y_test = mnist
    assert x_train.shape == (10000, 784) and x_test.shape == (10000, 784)
    assert sorted(set(y_train.tolist())) == list(range(10))
    assert 0.0 <= x_train.min() and x_train.max() == 1.0


def test_mlp_reaches_keras_accuracy_on_real_mnist(mnist):
    x_train, y_train, x_test, y_test = mnist
    model = Sequential([Dense(128, activation="relu"), Dense(10, activation="softmax")])
    model.compile(optimizer=Adam(learning_rate=1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x_train, y_train, epochs=5, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    assert accuracy >= 0.935, accuracy
    assert loss < 0.25
