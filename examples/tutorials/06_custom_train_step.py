"""API surface of the Keras guide "Customizing what happens in fit() with PyTorch".

keras.Model subclasses that override train_step (and test_step) while keeping fit/evaluate:
- CustomModel: the torch recipe of the guide: self.zero_grad(), a forward pass with
  training=True, self.compute_loss(...), loss.backward(), the gradients read from
  ``variable.value.grad``, self.optimizer.apply(gradients, trainable_weights) under
  torch.no_grad(), then every metric in self.metrics updated and their results returned;
- LowLevelModel: compiled without a loss, with its own keras.metrics.Mean loss tracker and
  MeanAbsoluteError metric, exposed through the ``metrics`` property so that they are reset every
  epoch, and its loss computed with keras.ops;
- WeightedModel: unpacks (x, y, sample_weight) with keras.utils.unpack_x_y_sample_weight and
  passes the weights to compute_loss and to the metrics;
- a test_step override used by evaluate.
The data: a synthetic nonlinear regression (hidden rule plus noise).
"""

import json

import numpy as np
import torch

import hpctrain as tf

keras = tf.keras
ops = keras.ops
keras.utils.set_random_seed(6)

rng = np.random.default_rng(6)
x = rng.uniform(-2, 2, size=(2500, 8)).astype("float32")
y = (np.sin(x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3] - 0.3 * x[:, 3:4] + 0.2 * rng.normal(size=(2500, 1))).astype("float32")
x_train, y_train, x_test, y_test = x[:2000], y[:2000], x[2000:], y[2000:]


class CustomModel(keras.Model):
    def train_step(self, data):
        x, y = data
        self.zero_grad()
        y_pred = self(x, training=True)
        loss = self.compute_loss(y=y, y_pred=y_pred)
        loss.backward()
        trainable_weights = [v for v in self.trainable_weights]
        gradients = [v.value.grad for v in trainable_weights]
        with torch.no_grad():
            self.optimizer.apply(gradients, trainable_weights)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        x, y = data
        y_pred = self(x, training=False)
        loss = self.compute_loss(y=y, y_pred=y_pred)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred)
        return {m.name: m.result() for m in self.metrics}


class LowLevelModel(keras.Model):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.mae_metric = keras.metrics.MeanAbsoluteError(name="mae")

    @property
    def metrics(self):
        return [self.loss_tracker, self.mae_metric]

    def train_step(self, data):
        x, y = data
        self.zero_grad()
        y_pred = self(x, training=True)
        loss = ops.mean(ops.square(y - y_pred))
        loss.backward()
        trainable_weights = [v for v in self.trainable_weights]
        gradients = [v.value.grad for v in trainable_weights]
        with torch.no_grad():
            self.optimizer.apply(gradients, trainable_weights)
        self.loss_tracker.update_state(loss)
        self.mae_metric.update_state(y, y_pred)
        return {"loss": self.loss_tracker.result(), "mae": self.mae_metric.result()}


class WeightedModel(keras.Model):
    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self.zero_grad()
        y_pred = self(x, training=True)
        loss = self.compute_loss(y=y, y_pred=y_pred, sample_weight=sample_weight)
        loss.backward()
        trainable_weights = [v for v in self.trainable_weights]
        gradients = [v.value.grad for v in trainable_weights]
        with torch.no_grad():
            self.optimizer.apply(gradients, trainable_weights)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred, sample_weight=sample_weight)
        return {m.name: m.result() for m in self.metrics}


def mlp(cls):
    inputs = keras.Input(shape=(8,))
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    hidden = keras.layers.Dense(64, activation="relu")(hidden)
    return cls(inputs, keras.layers.Dense(1)(hidden))


model = mlp(CustomModel)
model.compile(optimizer=keras.optimizers.Adam(learning_rate=2e-3), loss="mse", metrics=["mae"])
history = model.fit(x_train, y_train, epochs=12, batch_size=64, verbose=0)
print("CustomModel history:", {k: round(v[-1], 4) for k, v in history.history.items()})
results = model.evaluate(x_test, y_test, verbose=0, return_dict=True)
print("CustomModel test:", {k: round(float(v), 4) for k, v in results.items()})

low = mlp(LowLevelModel)
low.compile(optimizer=keras.optimizers.Adam(learning_rate=2e-3))
low_history = low.fit(x_train, y_train, epochs=2, batch_size=64, verbose=0)
print("LowLevelModel history:", {k: [round(v, 4) for v in vs] for k, vs in low_history.history.items()})

weighted = mlp(WeightedModel)
weighted.compile(optimizer=keras.optimizers.Adam(learning_rate=2e-3), loss="mse", metrics=["mae"])
sample_weight = np.where(x_train[:, 0] > 0, 2.0, 1.0).astype("float32")
weighted.fit(x_train, y_train, sample_weight=sample_weight, epochs=2, batch_size=64, verbose=0)
print("WeightedModel predictions:", [round(float(v), 3) for v in weighted.predict(x_test[:3], verbose=0).ravel()])

print("RESULT " + json.dumps({"metric": "test_mae", "value": float(results["mae"]), "kind": "mae"}))
