"""API surface of the TensorFlow 2 quickstart for beginners.

A Sequential model of Flatten -> Dense(128, relu) -> Dropout(0.2) -> Dense(10) that returns
logits, trained with SparseCategoricalCrossentropy(from_logits=True) and Adam on a subset of the
MNIST digits bundled with hpctrain. As in the quickstart, the untrained model's logits are turned
into probabilities and scored before training, the model is fitted and evaluated, and a second
model (the trained one followed by a Softmax layer) returns probabilities.

On the torch backend a model's output is a torch tensor; keras.ops.convert_to_numpy gives the
NumPy array the quickstart reads with ``.numpy()``.
"""

import json
import os

import numpy as np

import hpctrain as tf
from hpctrain.datasets.idx import read_idx

keras = tf.keras
tf.keras.utils.set_random_seed(1)

MNIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data", "mnist")
x_train = read_idx(os.path.join(MNIST, "train-images-idx3-ubyte.gz"))[:3000] / 255.0
y_train = read_idx(os.path.join(MNIST, "train-labels-idx1-ubyte.gz"))[:3000]
x_test = read_idx(os.path.join(MNIST, "t10k-images-idx3-ubyte.gz"))[:2000] / 255.0
y_test = read_idx(os.path.join(MNIST, "t10k-labels-idx1-ubyte.gz"))[:2000]
x_train, x_test = x_train.astype("float32"), x_test.astype("float32")

model = tf.keras.models.Sequential([
    tf.keras.layers.Input(shape=(28, 28)),
    tf.keras.layers.Flatten(),
    tf.keras.layers.Dense(128, activation="relu"),
    tf.keras.layers.Dropout(0.2),
    tf.keras.layers.Dense(10),
])

# Before training: logits for one example, their softmax, and the loss of a random guess (~2.3).
logits = keras.ops.convert_to_numpy(model(x_train[:1]))
probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
initial_loss = float(keras.ops.convert_to_numpy(loss_fn(y_train[:1], logits)))
print(f"untrained: probabilities sum to {probabilities.sum():.3f}, loss {initial_loss:.3f}")

model.compile(optimizer="adam", loss=loss_fn, metrics=["accuracy"])
model.fit(x_train, y_train, epochs=5, verbose=2)
test_loss, test_accuracy = model.evaluate(x_test, y_test, verbose=2)

probability_model = tf.keras.Sequential([model, tf.keras.layers.Softmax()])
predicted = probability_model.predict(x_test[:5], verbose=0)
assert predicted.shape == (5, 10) and np.allclose(predicted.sum(axis=1), 1.0, atol=1e-5)
print("first five predictions:", predicted.argmax(axis=1).tolist(), "labels:", y_test[:5].tolist())

print("RESULT " + json.dumps({"metric": "test_accuracy", "value": float(test_accuracy), "kind": "accuracy"}))
