"""API surface of the TensorFlow tutorial "Overfit and underfit".

Synthetic "physics events" (28 features, the class from a hidden nonlinear rule with 10% of the
labels flipped) with a deliberately small training set, so that a large model overfits. As in the
tutorial: an InverseTimeDecay learning-rate schedule, BinaryCrossentropy(from_logits=True) as
loss and as a metric beside accuracy, validation_data, and models compared by the gap between
training and validation cross-entropy: a small model, a large one, the large one with
kernel_regularizer=keras.regularizers.l2, with Dropout, and with both (here an L1L2 regularizer).
The regularization penalties appear in model.losses.
"""

import json

import numpy as np

import hpctrain as tf

keras = tf.keras
layers = keras.layers
regularizers = keras.regularizers
keras.utils.set_random_seed(16)

rng = np.random.default_rng(16)
features, n_train, n_val = 28, 800, 1500
w1 = rng.normal(size=(features, 8))
w2 = rng.normal(size=8)


def events(n):
    x = rng.normal(size=(n, features)).astype("float32")
    logits = np.tanh(x @ w1 / np.sqrt(features)) @ w2
    y = (logits > 0).astype("float32")
    flip = rng.random(n) < 0.1
    y[flip] = 1 - y[flip]
    return x, y[:, None]


x_train, y_train = events(n_train)
x_val, y_val = events(n_val)
BATCH_SIZE = 100
STEPS_PER_EPOCH = n_train // BATCH_SIZE
lr_schedule = keras.optimizers.schedules.InverseTimeDecay(0.003, decay_steps=STEPS_PER_EPOCH * 10, decay_rate=1,
                                                          staircase=False)


def compile_and_fit(model, name, epochs=15):
    model.compile(optimizer=keras.optimizers.Adam(lr_schedule),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[keras.metrics.BinaryCrossentropy(from_logits=True, name="binary_crossentropy"),
                           keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")])
    history = model.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=epochs, validation_data=(x_val, y_val),
                        validation_batch_size=500, verbose=0)
    train_ce = history.history["binary_crossentropy"][-1]
    val_ce = history.history["val_binary_crossentropy"][-1]
    print(f"{name:>10}: {model.count_params():6d} params, train CE {train_ce:.3f}, val CE {val_ce:.3f}, "
          f"val accuracy {history.history['val_accuracy'][-1]:.3f}")
    return history


def large(**regularization):
    dropout = regularization.pop("dropout", 0.0)
    stack = [keras.Input(shape=(features,))]
    for _ in range(3):
        stack.append(layers.Dense(128, activation="elu", **regularization))
        if dropout:
            stack.append(layers.Dropout(dropout))
    stack.append(layers.Dense(1))
    return keras.Sequential(stack)


compile_and_fit(keras.Sequential([keras.Input(shape=(features,)), layers.Dense(16, activation="elu"), layers.Dense(1)]),
                "small")
compile_and_fit(large(), "large")
l2_model = large(kernel_regularizer=regularizers.l2(0.001))
compile_and_fit(l2_model, "L2")
print("L2 penalties in model.losses:", len(l2_model.losses))
compile_and_fit(large(dropout=0.5), "dropout")
combined = large(kernel_regularizer=regularizers.L1L2(l1=1e-5, l2=1e-4), dropout=0.5)
history = compile_and_fit(combined, "combined")

print("RESULT " + json.dumps({"metric": "combined_val_accuracy", "value": float(history.history["val_accuracy"][-1]),
                              "kind": "accuracy"}))
