"""The classic Keras MNIST convnet (examples/mnist_convnet.py, written as Keras users write it) on the
bundled real MNIST: 5 epochs, batch 128, validation_split=0.1, >= 0.96 test accuracy."""

import importlib.util
import os

from conftest import MNIST_DIR, REPO


def _example():
    path = os.path.join(REPO, "examples", "mnist_convnet.py")
    spec = importlib.util.spec_from_file_location("mnist_convnet", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_keras_mnist_convnet_reaches_096_in_five_epochs():
    example = _example()
    (x_train, y_train), (x_test, y_test) = example.load_images(MNIST_DIR)
    assert x_train.shape == (10000, 28, 28, 1) and y_train.shape == (10000, 10) and x_test.shape[0] == 10000

    model = example.build_model()
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    history = model.fit(x_train, y_train, batch_size=128, epochs=5, validation_split=0.1, verbose=0)

    assert model.count_params() == 34826  # Keras's summary of this model says the same
    assert model.output_shapes()[4] == (None, 1600)
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    assert accuracy >= 0.96, f"test accuracy {accuracy:.4f}"
    assert len(history.history["val_accuracy"]) == 5 and history.history["val_accuracy"][-1] >= 0.95
