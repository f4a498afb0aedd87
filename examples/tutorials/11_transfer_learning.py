"""API surface of the Keras guide "Transfer learning & fine-tuning".

A base model is first trained on one task (naming the digit, on 2,500 bundled MNIST images),
then reused for another (telling odd digits from even ones, with 600 other training images). As in the guide: freezing with
``base_model.trainable = False`` (its trainable_weights move to non_trainable_weights), calling
the base model with training=False, a frozen BatchNormalization layer that keeps its moving
statistics, a new classification head trained on top, then unfreezing and fine-tuning end to end after
recompiling with a low learning rate. The frozen weights are checked to be unchanged by the first
phase and changed by the second.
"""

import json
import os

import numpy as np

import hpctrain as tf
from hpctrain.datasets.idx import read_idx

keras = tf.keras
layers = keras.layers
keras.utils.set_random_seed(11)

MNIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data", "mnist")
images = read_idx(os.path.join(MNIST, "train-images-idx3-ubyte.gz")).astype("float32") / 255
digits = read_idx(os.path.join(MNIST, "train-labels-idx1-ubyte.gz")).astype("int64")
test_images = read_idx(os.path.join(MNIST, "t10k-images-idx3-ubyte.gz")).astype("float32") / 255
test_digits = read_idx(os.path.join(MNIST, "t10k-labels-idx1-ubyte.gz")).astype("int64")

x_source, y_source = images[:2500], digits[:2500]
x_target, y_target = images[5000:5600], (digits[5000:5600] % 2).astype("float32")
x_test, y_test = test_images[:1500], (test_digits[:1500] % 2).astype("float32")

# The "pretrained" base: a feature extractor trained to name the digit.
base_model = keras.Sequential([
    keras.Input(shape=(28, 28)),
    layers.Flatten(),
    layers.Dense(128, use_bias=False),
    layers.BatchNormalization(),
    layers.Activation("relu"),
    layers.Dense(64, activation="relu"),
], name="base_model")
pretrain = keras.Sequential([base_model, layers.Dense(10)])
pretrain.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                 metrics=["accuracy"])
pretrain.fit(x_source, y_source, epochs=3, batch_size=64, verbose=0)

# Freeze the base: everything in it becomes non-trainable.
base_model.trainable = False
print(f"frozen base: {len(base_model.trainable_weights)} trainable, "
      f"{len(base_model.non_trainable_weights)} non-trainable weights")
assert not base_model.trainable_weights

inputs = keras.Input(shape=(28, 28))
x = base_model(inputs, training=False)
x = layers.Dropout(0.2)(x)
outputs = layers.Dense(1)(x)
model = keras.Model(inputs, outputs)
model.summary(show_trainable=True)

frozen_before = [w.copy() for w in base_model.get_weights()]
batch_norm = base_model.layers[2]
moving_mean_before = keras.ops.convert_to_numpy(batch_norm.moving_mean).copy()
model.compile(optimizer=keras.optimizers.Adam(), loss=keras.losses.BinaryCrossentropy(from_logits=True),
              metrics=[keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")])
model.fit(x_target, y_target, epochs=8, batch_size=32, validation_split=0.1, verbose=0)
head_only = model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
assert all(np.array_equal(a, b) for a, b in zip(frozen_before, base_model.get_weights()))
assert np.array_equal(moving_mean_before, keras.ops.convert_to_numpy(batch_norm.moving_mean))

# Fine-tune: unfreeze, recompile (the change takes effect only then), train with a low rate.
base_model.trainable = True
model.compile(optimizer=keras.optimizers.Adam(3e-4), loss=keras.losses.BinaryCrossentropy(from_logits=True),
              metrics=[keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")])
print("trainable weights after unfreezing:", len(model.trainable_weights))
model.fit(x_target, y_target, epochs=5, batch_size=32, validation_split=0.1, verbose=0)
# In Keras 3 the training=True of fit reaches the layers of a functional model even where the
# graph was built with training=False, so the unfrozen BatchNormalization updates its statistics.
moving_mean_changed = not np.array_equal(moving_mean_before, keras.ops.convert_to_numpy(batch_norm.moving_mean))
print("BatchNormalization moving mean updated during fine-tuning:", moving_mean_changed)
assert not all(np.array_equal(a, b) for a, b in zip(frozen_before, base_model.get_weights()))
fine_tuned = model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
print(f"odd/even test accuracy: new head on frozen base {head_only:.4f}, after fine-tuning {fine_tuned:.4f}")

print("RESULT " + json.dumps({"metric": "fine_tuned_test_accuracy", "value": float(fine_tuned), "kind": "accuracy"}))
