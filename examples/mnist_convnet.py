"""The classic Keras MNIST convnet, with the import word changed, on real MNIST digits.

    python examples/mnist_convnet.py [--data DIR] [--epochs 5] [--batch-size 128]

DIR holds the IDX files (default: the 10k/10k sample bundled in data/mnist). The model and the
training call are those of the Keras example "Simple MNIST convnet".
"""

import argparse
import os
import time

import numpy as np

import hpctrain as tf
from hpctrain import keras
from hpctrain.datasets import mnist
from hpctrain.keras import layers

BUNDLED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "mnist")


def build_model(num_classes: int = 10) -> keras.Sequential:
    return keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(num_classes, activation="softmax"),
    ])


def load_images(path: str):
    """MNIST as the Keras example prepares it: floats in [0, 1], a channel axis, one-hot labels."""
    (x_train, y_train), (x_test, y_test) = mnist.load_data(path)
    x_train = np.expand_dims(x_train.astype("float32") / 255, -1)
    x_test = np.expand_dims(x_test.astype("float32") / 255, -1)
    y_train = keras.utils.to_categorical(y_train, 10)
    y_test = keras.utils.to_categorical(y_test, 10)
    return (x_train, y_train), (x_test, y_test)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=BUNDLED, help="folder with the MNIST IDX files")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    tf.keras.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = load_images(args.data)
    print(f"MNIST: {len(x_train)} training and {len(x_test)} test images from {os.path.normpath(args.data)}")

    model = build_model()
    model.summary()
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, validation_split=0.1, verbose=2)
    train_seconds = time.perf_counter() - start
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"test accuracy: {accuracy:.4f}  test loss: {loss:.4f}  "
          f"training time: {train_seconds:.1f} s for {args.epochs} epochs "
          f"({train_seconds / args.epochs:.2f} s/epoch)")


if __name__ == "__main__":
    main()
