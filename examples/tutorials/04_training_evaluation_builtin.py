"""API surface of the Keras guide "Training & evaluation with the built-in methods".

On a subset of the bundled MNIST digits: a functional model compiled with an RMSprop optimizer,
a loss object and metric objects; fit with validation_data and callbacks (EarlyStopping);
evaluate and predict; a custom loss class (keras.losses.Loss subclass with its own parameter);
a custom metric class (keras.metrics.Metric subclass with add_variable, update_state honouring
sample_weight, result, reset_state); a layer that calls self.add_loss; validation_split;
class_weight; per-sample sample_weight; and the history returned by fit.
"""

import json
import os

import numpy as np

import hpctrain as tf
from hpctrain.datasets.idx import read_idx

keras = tf.keras
ops = keras.ops
layers = keras.layers
keras.utils.set_random_seed(4)

MNIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data", "mnist")
x_all = read_idx(os.path.join(MNIST, "train-images-idx3-ubyte.gz"))[:3000].reshape(-1, 784).astype("float32") / 255
y_all = read_idx(os.path.join(MNIST, "train-labels-idx1-ubyte.gz"))[:3000].astype("int64")
x_test = read_idx(os.path.join(MNIST, "t10k-images-idx3-ubyte.gz"))[:2000].reshape(-1, 784).astype("float32") / 255
y_test = read_idx(os.path.join(MNIST, "t10k-labels-idx1-ubyte.gz"))[:2000].astype("int64")
x_train, y_train = x_all[:2500], y_all[:2500]
x_val, y_val = x_all[2500:], y_all[2500:]


def get_uncompiled_model():
    inputs = keras.Input(shape=(784,), name="digits")
    x = layers.Dense(64, activation="relu", name="dense_1")(inputs)
    x = layers.Dense(64, activation="relu", name="dense_2")(x)
    outputs = layers.Dense(10, activation="softmax", name="predictions")(x)
    return keras.Model(inputs=inputs, outputs=outputs)


class CategoricalTruePositives(keras.metrics.Metric):
    """How many samples were classified correctly, counted (weighted) over the epoch."""

    def __init__(self, name="categorical_true_positives", **kwargs):
        super().__init__(name=name, **kwargs)
        self.true_positives = self.add_variable(shape=(), name="ctp", initializer="zeros")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.argmax(y_pred, axis=1)
        y_true = ops.reshape(y_true, (-1,))
        values = ops.cast(ops.equal(ops.cast(y_true, "int32"), ops.cast(y_pred, "int32")), "float32")
        if sample_weight is not None:
            values = ops.multiply(values, ops.cast(ops.reshape(sample_weight, (-1,)), "float32"))
        self.true_positives.assign_add(ops.sum(values))

    def result(self):
        # A copy: on the torch backend the variable's own tensor is updated in place, so returning
        # it would let the validation pass overwrite the training value already in the logs.
        return ops.copy(self.true_positives.value)

    def reset_state(self):
        self.true_positives.assign(0.0)


class CustomMSE(keras.losses.Loss):
    """Mean squared error to a one-hot target plus a penalty pulling predictions towards 0.5."""

    def __init__(self, regularization_factor=0.1, name="custom_mse"):
        super().__init__(name=name)
        self.regularization_factor = regularization_factor

    def call(self, y_true, y_pred):
        mse = ops.mean(ops.square(y_true - y_pred), axis=-1)
        reg = ops.mean(ops.square(0.5 - y_pred), axis=-1)
        return mse + reg * self.regularization_factor


class ActivityRegularizationLayer(layers.Layer):
    def call(self, inputs):
        self.add_loss(1e-3 * ops.sum(inputs))
        return inputs


# 1. The main model: compile with objects, fit with validation_data and a callback.
model = get_uncompiled_model()
model.compile(
    optimizer=keras.optimizers.RMSprop(learning_rate=1e-3),
    loss=keras.losses.SparseCategoricalCrossentropy(),
    metrics=[keras.metrics.SparseCategoricalAccuracy(), CategoricalTruePositives()],
)
callbacks = [keras.callbacks.EarlyStopping(monitor="val_loss", min_delta=1e-3, patience=3, verbose=1)]
history = model.fit(x_train, y_train, batch_size=64, epochs=6, validation_data=(x_val, y_val),
                    callbacks=callbacks, verbose=2)
print("history keys:", sorted(history.history))
results = model.evaluate(x_test, y_test, batch_size=128, verbose=0, return_dict=True)
print("test:", {k: round(float(v), 4) for k, v in results.items()})
predictions = model.predict(x_test[:3], verbose=0)
print("predictions shape:", predictions.shape)

# 2. A custom loss class on one-hot targets.
custom = get_uncompiled_model()
custom.compile(optimizer=keras.optimizers.Adam(), loss=CustomMSE())
custom.fit(x_train, keras.utils.to_categorical(y_train, 10), batch_size=64, epochs=1, verbose=0)

# 3. A layer adding its own loss, trained with validation_split.
inputs = keras.Input(shape=(784,), name="digits")
x = layers.Dense(64, activation="relu")(inputs)
x = ActivityRegularizationLayer()(x)
outputs = layers.Dense(10, activation="softmax")(layers.Dense(64, activation="relu")(x))
with_add_loss = keras.Model(inputs, outputs)
with_add_loss.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy")
with_add_loss.fit(x_train, y_train, batch_size=64, epochs=1, validation_split=0.2, verbose=0)

# 4. class_weight (digit 5 counts double) and the same thing as sample_weight.
class_weight = {i: 1.0 for i in range(10)}
class_weight[5] = 2.0
weighted = get_uncompiled_model()
weighted.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy",
                 metrics=["sparse_categorical_accuracy"])
weighted.fit(x_train, y_train, class_weight=class_weight, batch_size=64, epochs=1, verbose=0)
sample_weight = np.ones(len(y_train), dtype="float32")
sample_weight[y_train == 5] = 2.0
weighted.fit(x_train, y_train, sample_weight=sample_weight, batch_size=64, epochs=1, verbose=0)

print("RESULT " + json.dumps({"metric": "test_sparse_categorical_accuracy",
                              "value": float(results["sparse_categorical_accuracy"]), "kind": "accuracy"}))
