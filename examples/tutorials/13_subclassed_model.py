"""API surface of the Keras guide "Making new layers and models via subclassing".

Custom layers written as keras.layers.Layer subclasses: a Linear layer creating its weights in
build() with self.add_weight (lazily, from the input shape); a layer with a non-trainable weight
updated in call(); a composite MLPBlock that tracks its sublayers; a layer calling self.add_loss;
a layer whose call() takes a ``training`` argument (dropout only while training); get_config
for serialization. They are assembled in a keras.Model subclass (layers created in __init__,
the forward pass in call) and trained with compile/fit on synthetic two-spirals data.
"""

import json

import numpy as np

import hpctrain as tf

keras = tf.keras
ops = keras.ops
keras.utils.set_random_seed(13)

rng = np.random.default_rng(13)
n = 3000
turns = rng.uniform(0.25, 2.0, n)
spiral = rng.integers(0, 2, n)
angle = 2 * np.pi * turns + np.pi * spiral
x = np.stack([turns * np.cos(angle), turns * np.sin(angle)], axis=1) + 0.05 * rng.normal(size=(n, 2))
x = x.astype("float32")
y = spiral.astype("float32")[:, None]
x_train, y_train, x_test, y_test = x[:2400], y[:2400], x[2400:], y[2400:]


class Linear(keras.layers.Layer):
    def __init__(self, units=32, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units), initializer="random_normal", trainable=True,
                                 name="w")
        self.b = self.add_weight(shape=(self.units,), initializer="zeros", trainable=True, name="b")

    def call(self, inputs):
        return ops.matmul(inputs, self.w) + self.b

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class ComputeSum(keras.layers.Layer):
    """Keeps a running sum of its inputs in a non-trainable weight."""

    def __init__(self, input_dim, **kwargs):
        super().__init__(**kwargs)
        self.total = self.add_weight(initializer="zeros", shape=(input_dim,), trainable=False, name="total")

    def call(self, inputs):
        self.total.assign_add(ops.sum(inputs, axis=0))
        return self.total


class ActivityRegularization(keras.layers.Layer):
    def __init__(self, rate=1e-4, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate

    def call(self, inputs):
        self.add_loss(self.rate * ops.mean(ops.square(inputs)))
        return inputs


class CustomDropout(keras.layers.Layer):
    def __init__(self, rate, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, inputs, training=None):
        if training:
            return keras.random.dropout(inputs, rate=self.rate, seed=self.seed_generator)
        return inputs


class MLPBlock(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.linear_1 = Linear(64)
        self.linear_2 = Linear(64)
        self.regularize = ActivityRegularization()

    def call(self, inputs):
        x = ops.relu(self.linear_1(inputs))
        x = self.regularize(x)
        return ops.relu(self.linear_2(x))


class SpiralClassifier(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.features = Linear(64)
        self.block = MLPBlock()
        self.dropout = CustomDropout(0.1)
        self.classifier = Linear(1)

    def call(self, inputs, training=None):
        # Fourier features of the two coordinates make the spirals easy to separate.
        x = ops.concatenate([inputs, ops.sin(3.0 * inputs), ops.cos(3.0 * inputs)], axis=-1)
        x = ops.relu(self.features(x))
        x = self.block(x)
        x = self.dropout(x, training=training)
        return self.classifier(x)


# Layers on their own: lazy weight creation and a non-trainable weight.
linear = Linear(4)
assert not linear.weights
print("Linear(4) on (2, 3):", ops.convert_to_numpy(linear(ops.ones((2, 3)))).shape, "weights:",
      [tuple(w.shape) for w in linear.weights])
summer = ComputeSum(2)
summer(ops.ones((2, 2)))
print("ComputeSum after two calls:", ops.convert_to_numpy(summer(ops.ones((2, 2)))).tolist(),
      "trainable weights:", len(summer.trainable_weights))
print("Linear config:", Linear(8, name="eight").get_config()["units"])

model = SpiralClassifier()
model.compile(optimizer=keras.optimizers.Adam(learning_rate=3e-3), loss=keras.losses.BinaryCrossentropy(from_logits=True),
              metrics=[keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")])
model.fit(x_train, y_train, batch_size=64, epochs=8, verbose=0)
print("layers tracked by the model:", [layer.name for layer in model.layers])
print("losses added by layers in the last call:", len(model.losses))
assert len(model.trainable_weights) == 8  # three Linear layers at the top, two inside the block
results = model.evaluate(x_test, y_test, verbose=0, return_dict=True)
print("test:", {k: round(float(v), 4) for k, v in results.items()})

print("RESULT " + json.dumps({"metric": "test_accuracy", "value": float(results["accuracy"]), "kind": "accuracy"}))
