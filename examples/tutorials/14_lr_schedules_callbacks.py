"""API surface of the Keras learning-rate schedules and the built-in training callbacks, as the
keras.io optimizer/schedule and callbacks API pages and the TensorFlow "Save and load models" /
"Overfit and underfit" tutorials use them.

A classifier of synthetic, overlapping Gaussian clusters (five classes) trained three ways:
- keras.optimizers.schedules.ExponentialDecay as the optimizer's learning rate, with
  ModelCheckpoint (save_best_only on val_accuracy, a .keras file in a temporary directory),
  EarlyStopping (patience, restore_best_weights) and CSVLogger;
- keras.optimizers.schedules.CosineDecay with a linear warmup (warmup_target, warmup_steps);
- a constant learning rate changed per epoch by LearningRateScheduler and lowered by
  ReduceLROnPlateau, the rate of each epoch read back from the history (``learning_rate``).
The schedules are evaluated at given steps, the optimizer's step count is read from
``optimizer.iterations``, and the best checkpoint is reloaded with keras.models.load_model and
scored on the test split.
"""

import csv
import json
import os
import tempfile

import numpy as np

import hpctrain as tf

keras = tf.keras
layers = keras.layers
keras.utils.set_random_seed(14)

rng = np.random.default_rng(14)
classes, features, n = 5, 10, 3000
centers = rng.normal(0, 0.6, size=(classes, features))
y = rng.integers(0, classes, n)
x = (centers[y] + rng.normal(size=(n, features))).astype("float32")
x_train, y_train = x[:2000], y[:2000]
x_val, y_val = x[2000:2400], y[2000:2400]
x_test, y_test = x[2400:], y[2400:]


def make_model(learning_rate):
    model = keras.Sequential([
        keras.Input(shape=(features,)),
        layers.Dense(32, activation="relu"),
        layers.Dense(classes, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


workdir = tempfile.mkdtemp(prefix="schedules-")
BATCH_SIZE = 128
steps_per_epoch = len(x_train) // BATCH_SIZE

# 1. ExponentialDecay with checkpointing, early stopping and a CSV log.
exponential = keras.optimizers.schedules.ExponentialDecay(initial_learning_rate=1e-2, decay_steps=steps_per_epoch,
                                                          decay_rate=0.7, staircase=True)
print("ExponentialDecay at epochs 0, 1, 2:", [round(float(exponential(e * steps_per_epoch)), 5) for e in (0, 1, 2)])
best_path = os.path.join(workdir, "best.keras")
csv_path = os.path.join(workdir, "log.csv")
callbacks = [
    keras.callbacks.ModelCheckpoint(best_path, monitor="val_accuracy", save_best_only=True, mode="max"),
    keras.callbacks.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True),
    keras.callbacks.CSVLogger(csv_path),
]
model = make_model(exponential)
history = model.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=8, validation_data=(x_val, y_val), callbacks=callbacks,
                    verbose=0)
with open(csv_path) as f:
    rows = list(csv.DictReader(f))
print(f"CSVLogger wrote {len(rows)} rows with columns {sorted(rows[0])}")
print("optimizer step count:", int(keras.ops.convert_to_numpy(model.optimizer.iterations)))

# 2. CosineDecay with a linear warmup.
cosine = keras.optimizers.schedules.CosineDecay(initial_learning_rate=0.0, decay_steps=6 * steps_per_epoch,
                                                warmup_target=1e-2, warmup_steps=steps_per_epoch, alpha=0.05)
print("CosineDecay at epochs 0, 1, 4, 7:", [round(float(cosine(e * steps_per_epoch)), 5) for e in (0, 1, 4, 7)])
cosine_model = make_model(cosine)
cosine_model.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=7, verbose=0)
cosine_accuracy = cosine_model.evaluate(x_test, y_test, verbose=0)[1]

# 3. A constant rate, lowered by ReduceLROnPlateau and set per epoch by LearningRateScheduler.
plateau_model = make_model(1e-2)
reduce = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1, min_lr=1e-4)
scheduler = keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr if epoch < 3 else lr * 0.8)
plateau_history = plateau_model.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=6, validation_data=(x_val, y_val),
                                    callbacks=[reduce, scheduler], verbose=0)
print("learning rates per epoch:", [round(v, 5) for v in plateau_history.history["learning_rate"]])

best = keras.models.load_model(best_path)
test_loss, test_accuracy = best.evaluate(x_test, y_test, verbose=0)
print(f"best checkpoint (val_accuracy {max(history.history['val_accuracy']):.4f}): test accuracy {test_accuracy:.4f}; "
      f"cosine-decay model {cosine_accuracy:.4f}")

print("RESULT " + json.dumps({"metric": "best_checkpoint_test_accuracy", "value": float(test_accuracy),
                              "kind": "accuracy"}))
