"""The classic Keras MNIST convnet (examples/mnist_convnet.py, written as Keras users write it) on the
bundled real MNIST: its model, compile and fit call, on the first 4,000 training images for 4
epochs (the full 10,000 for 5 epochs, the example's run, takes minutes on two shared cores)."""

import importlib.util
import os

from conftest import MNIST_DIR, REPO


def _example():
    path = os.path.join(REPO, "examples", "mnist_convnet.py")
    spec = importlib.util.spec_from_file_location("mnist_convnet", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_keras_mnist_convnet_learns_the_digits():
    example = _example()
    (x_train, y_train), (x_test, y_test) = example.load_images(MNIST_DIR)
    assert x_train.shape == (10000, 28, 28, 1) and y_train.shape == (10000, 10) and x_test.shape[0] == 10000

    model = example.build_model()
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    history = model.fit(x_train[:4000], y_train[:4000], batch_size=128, epochs=4, validation_split=0.1, verbose=0)

    assert model.count_params() == 34826  # Keras's summary of this model says the same
    assert model.layers[4].output.shape == (None, 1600)  # the Flatten layer's output
    loss, accuracy = model.evaluate(x_test[:3000], y_test[:3000], verbose=0)
    assert accuracy >= 0.88, f"test accuracy {accuracy:.4f}"  # 0.915 with the suite's seed
    assert len(history.history["val_accuracy"]) == 4 and history.history["val_accuracy"][-1] >= 0.88
