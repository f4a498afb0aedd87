"""API surface of the Keras guide "Save, serialize, and export models" and the TensorFlow "Save
and load models" tutorial.

A functional classifier of synthetic data (a hidden nonlinear rule) with a custom layer
registered through keras.saving.register_keras_serializable (get_config / from_config), then:
- model.save("….keras") and keras.models.load_model: the same predictions, the optimizer state
  restored (same iteration count), and training resumed on the loaded model;
- save_weights / load_weights with a ``.weights.h5`` file into a freshly built model;
- get_config / from_config (keras.Model.from_config) and to_json /
  keras.models.model_from_json for the architecture alone;
- get_weights / set_weights between two models.
"""

import json
import os
import tempfile

import numpy as np

import hpctrain as tf

keras = tf.keras
layers = keras.layers
ops = keras.ops
keras.utils.set_random_seed(15)

rng = np.random.default_rng(15)
n = 3000
x = rng.normal(size=(n, 12)).astype("float32")
score = x[:, 0] * x[:, 1] + np.sin(2 * x[:, 2]) + x[:, 3] - x[:, 4]
y = np.digitize(score, np.quantile(score, [1 / 3, 2 / 3])).astype("int64")
x_train, y_train, x_test, y_test = x[:2400], y[:2400], x[2400:], y[2400:]


@keras.saving.register_keras_serializable(package="tutorials")
class ScaledResidual(layers.Layer):
    """x + scale * Dense(x), with the scale a trainable scalar."""

    def __init__(self, initial_scale=0.5, **kwargs):
        super().__init__(**kwargs)
        self.initial_scale = initial_scale

    def build(self, input_shape):
        self.dense = layers.Dense(input_shape[-1], activation="tanh")
        self.dense.build(input_shape)
        self.scale = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.initial_scale),
                                     name="scale")

    def call(self, inputs):
        return inputs + self.scale * self.dense(inputs)

    def get_config(self):
        return {**super().get_config(), "initial_scale": self.initial_scale}


def get_model():
    inputs = keras.Input(shape=(12,), name="features")
    x = layers.Dense(48, activation="relu")(inputs)
    x = ScaledResidual(name="residual")(x)
    outputs = layers.Dense(3, activation="softmax", name="classes")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


workdir = tempfile.mkdtemp(prefix="save-load-")
model = get_model()
model.fit(x_train, y_train, batch_size=64, epochs=6, verbose=0)
before = model.predict(x_test, verbose=0)

# The whole model: architecture, weights, compile arguments and optimizer state.
path = os.path.join(workdir, "classifier.keras")
model.save(path)
restored = keras.models.load_model(path)
assert isinstance(restored.get_layer("residual"), ScaledResidual)
np.testing.assert_allclose(restored.predict(x_test, verbose=0), before, atol=1e-6)
assert int(ops.convert_to_numpy(restored.optimizer.iterations)) == int(ops.convert_to_numpy(model.optimizer.iterations))
print(f"{os.path.basename(path)}: {os.path.getsize(path)} bytes, predictions identical, "
      f"optimizer at step {int(ops.convert_to_numpy(restored.optimizer.iterations))}")

# Weights only, into a model built from the same code.
weights_path = os.path.join(workdir, "classifier.weights.h5")
model.save_weights(weights_path)
fresh = get_model()
fresh.optimizer.build(fresh.trainable_variables)  # so that the optimizer's saved state loads too
fresh.load_weights(weights_path)
np.testing.assert_allclose(fresh.predict(x_test, verbose=0), before, atol=1e-6)

# Architecture only: config and JSON; then weights copied across.
clone = keras.Model.from_config(model.get_config())
from_json = keras.models.model_from_json(model.to_json())
from_json.set_weights(model.get_weights())
np.testing.assert_allclose(from_json.predict(x_test, verbose=0), before, atol=1e-6)
print("config round trip:", [layer.__class__.__name__ for layer in clone.layers])

# Training resumes on the loaded model from where the saved one stopped.
restored.fit(x_train, y_train, batch_size=64, epochs=4, verbose=0)
results = restored.evaluate(x_test, y_test, verbose=0, return_dict=True)
print("resumed model, test:", {k: round(float(v), 4) for k, v in results.items()})

print("RESULT " + json.dumps({"metric": "resumed_test_accuracy", "value": float(results["accuracy"]), "kind": "accuracy"}))
