"""API surface of the TensorFlow "Basic regression: Predict fuel efficiency" tutorial.

A synthetic stand-in for the Auto MPG table (cylinders, displacement, horsepower, weight,
acceleration, model year and a one-hot origin; fuel efficiency from a hidden nonlinear rule plus
noise). As in the tutorial: a keras.layers.Normalization layer adapted to the training features,
a one-feature linear model (horsepower only) and a multi-feature DNN (two Dense(64, relu) layers),
both trained on mean absolute error with validation_split=0.2, compared on the test split.
"""

import json

import numpy as np

import hpctrain as tf

keras = tf.keras
keras.utils.set_random_seed(2)

rng = np.random.default_rng(2)
n = 2000
cylinders = rng.choice([4, 6, 8], size=n, p=[0.5, 0.25, 0.25]).astype("float32")
displacement = cylinders * 40 + rng.normal(0, 15, n)
horsepower = displacement * 0.45 + rng.normal(0, 10, n) + 20
weight = 1500 + displacement * 6 + rng.normal(0, 200, n)
acceleration = 20 - horsepower / 25 + rng.normal(0, 1.5, n)
year = rng.integers(70, 83, n).astype("float32")
origin = rng.integers(0, 3, n)
mpg = (1800 / np.sqrt(weight) - 8 - 0.04 * horsepower + 0.6 * (year - 70) + 1.5 * (origin > 0)
       + 0.2 * acceleration + rng.normal(0, 2.0, n))
features = np.column_stack([cylinders, displacement, horsepower, weight, acceleration, year,
                            origin == 0, origin == 1, origin == 2]).astype("float32")
target = mpg.astype("float32")
split = int(0.8 * n)
train_x, test_x = features[:split], features[split:]
train_y, test_y = target[:split], target[split:]
HORSEPOWER = 2

# One feature: a Normalization layer adapted to horsepower, then one Dense unit.
horsepower_normalizer = keras.layers.Normalization(axis=None)
horsepower_normalizer.adapt(train_x[:, HORSEPOWER])
linear_model = keras.Sequential([keras.Input(shape=(1,)), horsepower_normalizer, keras.layers.Dense(units=1)])
linear_model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.5), loss="mean_absolute_error")
linear_model.fit(train_x[:, HORSEPOWER], train_y, epochs=6, batch_size=64, verbose=0, validation_split=0.2)
linear_mae = linear_model.evaluate(test_x[:, HORSEPOWER], test_y, verbose=0)

# All features: the normalizer learns a mean and variance per column.
normalizer = keras.layers.Normalization(axis=-1)
normalizer.adapt(np.array(train_x))
print("normalizer mean (first 3 features):", keras.ops.convert_to_numpy(normalizer.mean)[0, :3].round(1))


def build_and_compile_model(norm):
    model = keras.Sequential([
        keras.Input(shape=(train_x.shape[1],)),
        norm,
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(1),
    ])
    model.compile(loss="mean_absolute_error", optimizer=keras.optimizers.Adam(0.003))
    return model


dnn_model = build_and_compile_model(normalizer)
dnn_model.summary()
history = dnn_model.fit(train_x, train_y, validation_split=0.2, epochs=20, batch_size=64, verbose=0)
print("final training / validation MAE:", round(history.history["loss"][-1], 3),
      round(history.history["val_loss"][-1], 3))
dnn_mae = dnn_model.evaluate(test_x, test_y, verbose=0)
test_predictions = dnn_model.predict(test_x, verbose=0).flatten()
print(f"test MAE: linear (horsepower) {linear_mae:.3f}, DNN {dnn_mae:.3f}")
assert np.isclose(np.mean(np.abs(test_predictions - test_y)), dnn_mae, rtol=1e-3)

print("RESULT " + json.dumps({"metric": "dnn_test_mae", "value": float(dnn_mae), "kind": "mae"}))
