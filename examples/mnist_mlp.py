"""Train a Keras-style MLP on real MNIST digits and report what it achieved.

    python examples/mnist_mlp.py [--data DIR] [--epochs 5] [--batch-size 32]

DIR holds the IDX files (default: the 10k/10k sample bundled in data/mnist).
"""

import argparse
import os
import time

import hpctrain as tf
from hpctrain.datasets import mnist
from hpctrain.keras.layers import Dense, Input
from hpctrain.keras.models import Sequential
from hpctrain.keras.optimizers import Adam

BUNDLED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "mnist")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=BUNDLED, help="folder with the MNIST IDX files")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    tf.keras.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = mnist.load_data(args.data)
    x_train = x_train.reshape(len(x_train), -1).astype("float32") / 255.0
    x_test = x_test.reshape(len(x_test), -1).astype("float32") / 255.0
    print(f"MNIST: {len(x_train)} training and {len(x_test)} test images from {os.path.normpath(args.data)}")

    model = Sequential([Input((784,)), Dense(128, activation="relu"), Dense(10, activation="softmax")])
    model.compile(optimizer=Adam(learning_rate=1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.summary()

    start = time.perf_counter()
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, verbose=2)
    train_seconds = time.perf_counter() - start
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"test accuracy: {accuracy:.4f}  test loss: {loss:.4f}  "
          f"training time: {train_seconds:.1f} s for {args.epochs} epochs "
          f"({train_seconds / args.epochs:.2f} s/epoch)")


if __name__ == "__main__":
    main()
