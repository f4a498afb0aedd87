"""API surface of the TensorFlow "Time series forecasting" tutorial.

A synthetic hourly series (a daily and a weekly cycle, a slow trend and noise), split in time
into training, validation and test parts and normalized with the training mean and standard
deviation. As in the tutorial: a window generator (here a keras.utils.PyDataset that slices input
windows and the next value out of the series, shuffled per epoch), a last-value baseline, a
Conv1D model and an LSTM model, trained with mean squared error, the MeanAbsoluteError metric
and an EarlyStopping callback on validation loss, compared on the test part.
"""

import json
import math

import numpy as np

import hpctrain as tf

keras = tf.keras
layers = keras.layers
keras.utils.set_random_seed(9)

rng = np.random.default_rng(9)
hours = np.arange(3000)
series = (np.sin(2 * np.pi * hours / 24) + 0.5 * np.sin(2 * np.pi * hours / (24 * 7)) + hours / 3000
          + 0.1 * rng.normal(size=hours.size)).astype("float32")
train, val, test = series[:2000], series[2000:2500], series[2500:]
mean, std = train.mean(), train.std()
train, val, test = [(part - mean) / std for part in (train, val, test)]

INPUT_WIDTH = 24


class WindowGenerator(keras.utils.PyDataset):
    """Batches of (the last INPUT_WIDTH values, the next value) cut from one series."""

    def __init__(self, data, batch_size=64, shuffle=False, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.data = data
        self.starts = np.arange(len(data) - INPUT_WIDTH)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.rng = np.random.default_rng(seed)
        if shuffle:
            self.rng.shuffle(self.starts)

    def __len__(self):
        return math.ceil(len(self.starts) / self.batch_size)

    def __getitem__(self, index):
        starts = self.starts[index * self.batch_size:(index + 1) * self.batch_size]
        inputs = np.stack([self.data[s:s + INPUT_WIDTH] for s in starts])[..., None]
        labels = self.data[starts + INPUT_WIDTH][:, None]
        return inputs, labels

    def on_epoch_end(self):
        if self.shuffle:
            self.rng.shuffle(self.starts)


train_windows = WindowGenerator(train, shuffle=True, seed=9)
val_windows = WindowGenerator(val)
test_windows = WindowGenerator(test)
inputs, labels = train_windows[0]
print(f"{len(train_windows)} training batches; inputs {inputs.shape}, labels {labels.shape}")

# Baseline: tomorrow is today (here: the next hour equals the last one).
test_inputs = np.concatenate([test_windows[i][0] for i in range(len(test_windows))])
test_labels = np.concatenate([test_windows[i][1] for i in range(len(test_windows))])
baseline_mae = float(np.mean(np.abs(test_inputs[:, -1] - test_labels)))


def compile_and_fit(model, epochs):
    early_stopping = keras.callbacks.EarlyStopping(monitor="val_loss", patience=2, mode="min",
                                                   restore_best_weights=True)
    model.compile(loss=keras.losses.MeanSquaredError(), optimizer=keras.optimizers.Adam(3e-3),
                  metrics=[keras.metrics.MeanAbsoluteError()])
    return model.fit(train_windows, epochs=epochs, validation_data=val_windows, callbacks=[early_stopping],
                     verbose=0)


conv_model = keras.Sequential([
    keras.Input(shape=(INPUT_WIDTH, 1)),
    layers.Conv1D(filters=16, kernel_size=5, activation="relu"),
    layers.Conv1D(filters=16, kernel_size=5, activation="relu"),
    layers.Flatten(),
    layers.Dense(16, activation="relu"),
    layers.Dense(1),
])
compile_and_fit(conv_model, epochs=8)
conv_mae = conv_model.evaluate(test_windows, verbose=0, return_dict=True)["mean_absolute_error"]

lstm_model = keras.Sequential([
    keras.Input(shape=(INPUT_WIDTH, 1)),
    layers.LSTM(16, return_sequences=False),
    layers.Dense(1),
])
history = compile_and_fit(lstm_model, epochs=6)
print("LSTM validation MAE per epoch:", [round(v, 4) for v in history.history["val_mean_absolute_error"]])
lstm_mae = lstm_model.evaluate(test_windows, verbose=0, return_dict=True)["mean_absolute_error"]
forecast = lstm_model.predict(test_windows, verbose=0)
assert forecast.shape == test_labels.shape

print(f"test MAE (normalized units): last value {baseline_mae:.4f}, Conv1D {conv_mae:.4f}, LSTM {lstm_mae:.4f}")
print("RESULT " + json.dumps({"metric": "lstm_test_mae", "value": float(lstm_mae), "kind": "mae"}))
