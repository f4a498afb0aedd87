"""API surface of the Keras guide "The Sequential model", with keras.utils.to_categorical and
categorical_crossentropy as in the classic Keras multi-class MLP examples.

A model built incrementally with keras.Sequential() and model.add (an Input first, so that it is
built at once and model.summary() shows every shape), model.pop, the layers list, a model built
without an Input and therefore without weights until its first call, feature extraction with a
keras.Model over the Sequential model's inputs and one layer's output, and training on one-hot
labels from keras.utils.to_categorical with categorical_crossentropy and
keras.metrics.CategoricalAccuracy. The data: synthetic points in 8 dimensions, the class (one of
four) given by the signs of two hidden linear combinations of the coordinates.
"""

import json

import numpy as np

import hpctrain as tf

keras = tf.keras
layers = keras.layers
keras.utils.set_random_seed(17)

rng = np.random.default_rng(17)
n, dims, num_classes = 3000, 8, 4
directions = rng.normal(size=(dims, 2))
x = rng.normal(size=(n, dims)).astype("float32")
signs = (x @ directions > 0).astype(int)
labels = signs[:, 0] * 2 + signs[:, 1]
y = keras.utils.to_categorical(labels, num_classes=num_classes)
print("one-hot labels:", y.shape, y.dtype, "first row", y[0].tolist(), "for class", int(labels[0]))
x_train, y_train, x_test, y_test = x[:2400], y[:2400], x[2400:], y[2400:]

model = keras.Sequential(name="incremental")
model.add(keras.Input(shape=(dims,)))
model.add(layers.Dense(32, activation="relu", name="hidden_1"))
model.add(layers.Dense(32, activation="relu", name="hidden_2"))
model.add(layers.Dense(99, name="to_be_removed"))
model.pop()
model.add(layers.Dense(num_classes, activation="softmax", name="probabilities"))
model.summary()
print("layers:", [layer.name for layer in model.layers])

# Without an Input, the model has no weights until it sees data.
lazy = keras.Sequential([layers.Dense(4), layers.Dense(2)])
assert not lazy.weights
lazy(np.ones((1, 3), dtype="float32"))
print("lazy model weights after the first call:", len(lazy.weights))

model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="categorical_crossentropy",
              metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
model.fit(x_train, y_train, batch_size=64, epochs=8, validation_split=0.1, verbose=0)
loss, accuracy = model.evaluate(x_test, y_test, verbose=0)

# Feature extraction: the activations of every layer for one batch.
extractor = keras.Model(inputs=model.inputs[0], outputs=[layer.output for layer in model.layers])
activations = extractor(x_test[:5])
print("feature shapes:", [tuple(a.shape) for a in activations])
predicted = model.predict(x_test, verbose=0).argmax(axis=1)
assert np.isclose((predicted == y_test.argmax(axis=1)).mean(), accuracy, atol=1e-6)
print(f"test loss {loss:.4f}, accuracy {accuracy:.4f}")

print("RESULT " + json.dumps({"metric": "test_accuracy", "value": float(accuracy), "kind": "accuracy"}))
