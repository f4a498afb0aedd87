"""API surface of the keras.io example "Simple MNIST convnet".

The example's data preparation (scale to [0, 1], add the channel axis with np.expand_dims,
keras.utils.to_categorical labels) and its model (Conv2D -> MaxPooling2D -> Conv2D ->
MaxPooling2D -> Flatten -> Dropout(0.5) -> Dense softmax), compiled with categorical_crossentropy
and Adam, trained with validation_split=0.1 and scored with evaluate. To keep it to seconds on a
CPU it trains on 2,400 bundled MNIST digits with half the example's filters (16 and 32).
"""

import json
import os

import numpy as np

import hpctrain as tf
from hpctrain.datasets.idx import read_idx

keras = tf.keras
layers = keras.layers
keras.utils.set_random_seed(7)

num_classes = 10
input_shape = (28, 28, 1)

MNIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data", "mnist")
x_train = read_idx(os.path.join(MNIST, "train-images-idx3-ubyte.gz"))[:2400]
y_train = read_idx(os.path.join(MNIST, "train-labels-idx1-ubyte.gz"))[:2400]
x_test = read_idx(os.path.join(MNIST, "t10k-images-idx3-ubyte.gz"))[:2000]
y_test = read_idx(os.path.join(MNIST, "t10k-labels-idx1-ubyte.gz"))[:2000]

x_train = np.expand_dims(x_train.astype("float32") / 255, -1)
x_test = np.expand_dims(x_test.astype("float32") / 255, -1)
print("x_train shape:", x_train.shape, "-", x_train.shape[0], "train samples,", x_test.shape[0], "test samples")
y_train = keras.utils.to_categorical(y_train, num_classes)
y_test = keras.utils.to_categorical(y_test, num_classes)

model = keras.Sequential([
    keras.Input(shape=input_shape),
    layers.Conv2D(16, kernel_size=(3, 3), activation="relu"),
    layers.MaxPooling2D(pool_size=(2, 2)),
    layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
    layers.MaxPooling2D(pool_size=(2, 2)),
    layers.Flatten(),
    layers.Dropout(0.5),
    layers.Dense(num_classes, activation="softmax"),
])
model.summary()

batch_size = 64
epochs = 4
model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, validation_split=0.1, verbose=2)

score = model.evaluate(x_test, y_test, verbose=0)
print("Test loss:", score[0])
print("Test accuracy:", score[1])

print("RESULT " + json.dumps({"metric": "test_accuracy", "value": float(score[1]), "kind": "accuracy"}))
