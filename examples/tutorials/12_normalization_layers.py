"""API surface of the Keras normalization layers as the TensorFlow "Normalizations" guide and the
keras.io BatchNormalization / LayerNormalization / GroupNormalization reference examples use them.

Two classifiers of the bundled MNIST digits, one with BatchNormalization after each hidden Dense
layer (Dense without bias -> BatchNormalization -> Activation, the usual ordering) and one with
LayerNormalization, and a small convnet with GroupNormalization. Shown: training=True versus
training=False calls (batch statistics versus moving statistics), the moving_mean and
moving_variance updated by fit with the layer's momentum, the non-trainable weights of
BatchNormalization, the per-sample statistics of LayerNormalization (identical outputs in both
modes), and the gamma/beta parameters.
"""

import json
import os

import numpy as np

import hpctrain as tf
from hpctrain.datasets.idx import read_idx

keras = tf.keras
layers = keras.layers
ops = keras.ops
keras.utils.set_random_seed(12)

MNIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data", "mnist")
x_train = read_idx(os.path.join(MNIST, "train-images-idx3-ubyte.gz"))[:3000].reshape(-1, 784).astype("float32") / 255
y_train = read_idx(os.path.join(MNIST, "train-labels-idx1-ubyte.gz"))[:3000].astype("int64")
x_test = read_idx(os.path.join(MNIST, "t10k-images-idx3-ubyte.gz"))[:2000].reshape(-1, 784).astype("float32") / 255
y_test = read_idx(os.path.join(MNIST, "t10k-labels-idx1-ubyte.gz"))[:2000].astype("int64")


def classifier(norm):
    return keras.Sequential([
        keras.Input(shape=(784,)),
        layers.Dense(128, use_bias=False),
        norm(),
        layers.Activation("relu"),
        layers.Dense(64, use_bias=False),
        norm(),
        layers.Activation("relu"),
        layers.Dense(10, activation="softmax"),
    ])


def compile_and_fit(model, epochs):
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=64, epochs=epochs, validation_split=0.1, verbose=0)
    return model.evaluate(x_test, y_test, batch_size=256, verbose=0, return_dict=True)["accuracy"]


bn_model = classifier(lambda: layers.BatchNormalization(momentum=0.9, epsilon=1e-3))
bn = bn_model.layers[1]
print("BatchNormalization weights:", [(w.path.split("/")[-1], w.trainable) for w in bn.weights])
bn_accuracy = compile_and_fit(bn_model, epochs=4)
moving_mean = ops.convert_to_numpy(bn.moving_mean)
moving_variance = ops.convert_to_numpy(bn.moving_variance)
print(f"after fit: moving mean in [{moving_mean.min():.3f}, {moving_mean.max():.3f}], "
      f"moving variance in [{moving_variance.min():.3f}, {moving_variance.max():.3f}]")
assert np.abs(moving_mean).max() > 0 and not np.allclose(moving_variance, 1.0)

# training=True normalizes with the batch's own statistics, training=False with the moving ones.
batch = x_test[:256]
train_mode = ops.convert_to_numpy(bn_model(batch, training=True))
infer_mode = ops.convert_to_numpy(bn_model(batch, training=False))
print("mean |train-mode - inference-mode| probability:", float(np.abs(train_mode - infer_mode).mean()))
assert np.allclose(infer_mode, bn_model.predict(batch, verbose=0), atol=1e-5)

ln_model = classifier(lambda: layers.LayerNormalization(epsilon=1e-3))
ln_accuracy = compile_and_fit(ln_model, epochs=4)
ln = ln_model.layers[1]
print("LayerNormalization weights:", [(w.path.split("/")[-1], w.trainable) for w in ln.weights])
same = np.allclose(ops.convert_to_numpy(ln_model(batch, training=True)),
                   ops.convert_to_numpy(ln_model(batch, training=False)), atol=1e-6)
print("LayerNormalization gives the same output in both modes:", same)
assert same

gn_model = keras.Sequential([
    keras.Input(shape=(28, 28, 1)),
    layers.Conv2D(8, 3, strides=2, use_bias=False),
    layers.GroupNormalization(groups=4),
    layers.Activation("relu"),
    layers.GlobalAveragePooling2D(),
    layers.Dense(10, activation="softmax"),
])
gn_model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
gn_model.fit(x_train[:1000].reshape(-1, 28, 28, 1), y_train[:1000], batch_size=64, epochs=1, verbose=0)
print("GroupNormalization convnet output:", gn_model.predict(x_test[:2].reshape(-1, 28, 28, 1), verbose=0).shape)

print(f"test accuracy: BatchNormalization {bn_accuracy:.4f}, LayerNormalization {ln_accuracy:.4f}")
print("RESULT " + json.dumps({"metric": "batchnorm_test_accuracy", "value": float(bn_accuracy), "kind": "accuracy"}))
