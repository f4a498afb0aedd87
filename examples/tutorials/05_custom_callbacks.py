"""API surface of the Keras guide "Writing your own callbacks".

A small regression model (mean squared error loss, mean absolute error metric) on synthetic data
with a hidden linear rule plus noise, trained with callbacks written here:
- a callback that counts every hook it receives (on_train_begin/end, on_epoch_begin/end,
  on_train_batch_begin/end, on_test_begin/end, on_test_batch_begin/end, on_predict_begin/end,
  on_predict_batch_begin/end) and checks the keys of the ``logs`` dict;
- one that prints the loss and error per batch and per epoch from ``logs``;
- early stopping at the minimum loss, keeping the best weights (self.model.get_weights /
  set_weights, self.model.stop_training, self.stopped_epoch);
- a learning-rate scheduler that sets self.model.optimizer.learning_rate from a schedule table.
"""

import collections
import json

import numpy as np

import hpctrain as tf

keras = tf.keras
keras.utils.set_random_seed(5)

rng = np.random.default_rng(5)
true_w = rng.normal(size=(16, 1))
x = rng.normal(size=(2500, 16)).astype("float32")
y = (x @ true_w + 0.5 * rng.normal(size=(2500, 1))).astype("float32")
x_train, y_train, x_test, y_test = x[:2000], y[:2000], x[2000:], y[2000:]


def get_model():
    model = keras.Sequential([keras.Input(shape=(16,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05), loss="mean_squared_error",
                  metrics=["mean_absolute_error"])
    return model


class HookCounter(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()
        self.keys = {}

    def _record(self, hook, logs):
        self.calls[hook] += 1
        self.keys[hook] = sorted((logs or {}).keys())

    def on_train_begin(self, logs=None): self._record("train_begin", logs)
    def on_train_end(self, logs=None): self._record("train_end", logs)
    def on_epoch_begin(self, epoch, logs=None): self._record("epoch_begin", logs)
    def on_epoch_end(self, epoch, logs=None): self._record("epoch_end", logs)
    def on_test_begin(self, logs=None): self._record("test_begin", logs)
    def on_test_end(self, logs=None): self._record("test_end", logs)
    def on_predict_begin(self, logs=None): self._record("predict_begin", logs)
    def on_predict_end(self, logs=None): self._record("predict_end", logs)
    def on_train_batch_begin(self, batch, logs=None): self._record("train_batch_begin", logs)
    def on_train_batch_end(self, batch, logs=None): self._record("train_batch_end", logs)
    def on_test_batch_begin(self, batch, logs=None): self._record("test_batch_begin", logs)
    def on_test_batch_end(self, batch, logs=None): self._record("test_batch_end", logs)
    def on_predict_batch_begin(self, batch, logs=None): self._record("predict_batch_begin", logs)
    def on_predict_batch_end(self, batch, logs=None): self._record("predict_batch_end", logs)


class LossAndErrorPrintingCallback(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch % 25 == 0:
            print(f"  batch {batch}: loss {logs['loss']:7.3f}")

    def on_test_batch_end(self, batch, logs=None):
        if batch == 0:
            print(f"  evaluating batch {batch}: loss {logs['loss']:7.3f}")

    def on_epoch_end(self, epoch, logs=None):
        print(f"epoch {epoch}: loss {logs['loss']:.3f}, mean absolute error {logs['mean_absolute_error']:.3f}")


class EarlyStoppingAtMinLoss(keras.callbacks.Callback):
    """Stop when the training loss has not improved for ``patience`` epochs; keep the best weights."""

    def __init__(self, patience=0):
        super().__init__()
        self.patience = patience
        self.best_weights = None

    def on_train_begin(self, logs=None):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = np.inf

    def on_epoch_end(self, epoch, logs=None):
        current = logs.get("loss")
        if np.less(current, self.best):
            self.best = current
            self.wait = 0
            self.best_weights = self.model.get_weights()
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stopped_epoch = epoch
                self.model.stop_training = True
                self.model.set_weights(self.best_weights)

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0:
            print(f"epoch {self.stopped_epoch}: early stopping, best loss {self.best:.4f}")


LR_SCHEDULE = [(0, 0.05), (2, 0.02), (4, 0.005), (6, 0.001)]


def lr_schedule(epoch, lr):
    for start, rate in reversed(LR_SCHEDULE):
        if epoch >= start:
            return rate
    return lr


class CustomLearningRateScheduler(keras.callbacks.Callback):
    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        scheduled = self.schedule(epoch, lr)
        self.model.optimizer.learning_rate = scheduled
        self.seen.append(scheduled)


# Every hook, on fit, evaluate and predict.
counter = HookCounter()
model = get_model()
model.fit(x_train[:256], y_train[:256], batch_size=64, epochs=2, verbose=0, validation_split=0.25,
          callbacks=[counter])
model.evaluate(x_test[:128], y_test[:128], batch_size=64, verbose=0, callbacks=[counter])
model.predict(x_test[:128], batch_size=64, verbose=0, callbacks=[counter])
print("hook calls:", dict(sorted(counter.calls.items())))
print("epoch_end logs keys:", counter.keys["epoch_end"])
assert counter.calls["train_batch_end"] == 6 and counter.calls["epoch_end"] == 2
assert counter.calls["predict_batch_end"] == 2 and counter.calls["test_end"] == 3
assert "val_loss" in counter.keys["epoch_end"]

# The real run: printing, early stopping and the scheduler together.
model = get_model()
scheduler = CustomLearningRateScheduler(lr_schedule)
stopper = EarlyStoppingAtMinLoss(patience=2)
model.fit(x_train, y_train, batch_size=64, epochs=8, verbose=0,
          callbacks=[LossAndErrorPrintingCallback(), stopper, scheduler])
print("learning rates used:", scheduler.seen)
results = model.evaluate(x_test, y_test, batch_size=128, verbose=0, return_dict=True)
print("test:", {k: round(float(v), 4) for k, v in results.items()})

print("RESULT " + json.dumps({"metric": "test_mean_absolute_error", "value": float(results["mean_absolute_error"]),
                              "kind": "mae"}))
