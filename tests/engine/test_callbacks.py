"""Keras's scheduling and logging callbacks on Keras models trained through the seam, and the
engine's own callbacks (hpctrain.engine.callbacks) on the native API, which is who uses them."""

import csv

import numpy as np
import pytest
import torch

import hpctrain
from conftest import small_classification
from hpctrain.engine import callbacks as engine_callbacks
from hpctrain.keras import optimizers
from hpctrain.keras.callbacks import Callback, CSVLogger, LambdaCallback, LearningRateScheduler, ReduceLROnPlateau
from hpctrain.keras.layers import Dense
from hpctrain.keras.models import Sequential


def _model(optimizer):
    model = Sequential([Dense(3, activation="softmax", input_dim=6)])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_learning_rate_scheduler_sets_each_epochs_rate_and_logs_it(rng):
    x, y = small_classification(rng)
    model = _model(optimizers.SGD(learning_rate=0.08))
    seen = []
    history = model.fit(x, y, epochs=4, verbose=0, callbacks=[
        LearningRateScheduler(lambda epoch, lr: lr if epoch == 0 else lr / 2),
        LambdaCallback(on_epoch_begin=lambda epoch, logs: seen.append(float(model.optimizer.learning_rate)))])
    assert history.history["learning_rate"] == pytest.approx([0.08, 0.04, 0.02, 0.01])
    assert seen == pytest.approx([0.08, 0.04, 0.02, 0.01])  # the rate in force during each epoch
    one_argument = model.fit(x, y, epochs=2, verbose=0, callbacks=[LearningRateScheduler(lambda epoch: 0.5 ** epoch)])
    assert one_argument.history["learning_rate"] == pytest.approx([1.0, 0.5])


def test_reduce_lr_on_plateau_follows_patience_and_cooldown(rng):
    x, y = small_classification(rng)
    model = _model(optimizers.SGD(learning_rate=1e-9))  # too small to move val_loss: a plateau
    history = model.fit(x, y, epochs=7, verbose=0, validation_data=(x, y),
                        callbacks=[ReduceLROnPlateau(factor=0.5, patience=2, cooldown=1)])
    # Logged before each epoch's decision. Keras's rules: reduce after epoch 2 (patience 2); epoch 3
    # ends the cooldown and already counts towards the patience again, so the next cut is after epoch 4.
    assert history.history["learning_rate"] == pytest.approx([1e-9, 1e-9, 1e-9, 5e-10, 5e-10, 2.5e-10, 2.5e-10])


def test_reduce_lr_on_plateau_respects_min_lr(rng):
    x, y = small_classification(rng)
    model = _model(optimizers.SGD(learning_rate=1e-9))
    model.fit(x, y, epochs=6, verbose=0, validation_data=(x, y),
              callbacks=[ReduceLROnPlateau(factor=0.1, patience=1, min_lr=4e-10)])
    assert float(model.optimizer.learning_rate) == pytest.approx(4e-10)


def test_lambda_callback_hooks_run_including_per_batch_ones(rng):
    x, y = small_classification(rng, n=64)
    model = _model("adam")
    batches, epochs = [], []
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[LambdaCallback(
        on_train_batch_end=lambda batch, logs: batches.append((batch, sorted(logs))),
        on_epoch_end=lambda epoch, logs: epochs.append(epoch))])
    assert epochs == [0, 1]
    assert batches == [(b, ["accuracy", "loss"]) for b in range(4)] * 2


def test_csv_logger_writes_the_history_and_appends(tmp_path, rng):
    x, y = small_classification(rng)
    path = tmp_path / "log.csv"
    model = _model("adam")
    history = model.fit(x, y, epochs=3, verbose=0, callbacks=[CSVLogger(path)])
    rows = list(csv.reader(open(path)))
    # Keras's CSVLogger adds val_ columns when the first epoch has none (left empty without validation).
    assert rows[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [int(r[0]) for r in rows[1:]] == [0, 1, 2]
    np.testing.assert_allclose([float(r[2]) for r in rows[1:]], history.history["loss"], rtol=1e-6)
    model.fit(x, y, epochs=2, verbose=0, callbacks=[CSVLogger(path, append=True)])
    rows = list(csv.reader(open(path)))
    assert len(rows) == 6 and rows.count(rows[0]) == 1


def test_model_checkpoint_every_epoch_and_best_only(tmp_path, rng):
    from hpctrain.keras.callbacks import ModelCheckpoint
    from hpctrain.keras.models import load_model

    x, y = small_classification(rng)
    model = _model(optimizers.Adam(0.05))
    every = ModelCheckpoint(tmp_path / "all" / "m-{epoch:02d}.keras")
    best = ModelCheckpoint(tmp_path / "best.weights.h5", monitor="val_loss", save_best_only=True,
                           save_weights_only=True)
    history = model.fit(x, y, epochs=3, verbose=0, validation_data=(x, y), callbacks=[every, best])
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["m-01.keras", "m-02.keras", "m-03.keras"]
    last = load_model(tmp_path / "all" / "m-03.keras")
    for a, b in zip(last.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    # the optimizer's state the engine kept is in the saved model too (written back before callbacks run)
    assert int(last.optimizer.iterations) == int(model.optimizer.iterations) == 3 * 2
    for a, b in zip(last.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert best.best == pytest.approx(min(history.history["val_loss"]))
    restored = _model("adam")
    restored.load_weights(tmp_path / "best.weights.h5")
    assert restored.evaluate(x, y, verbose=0)[0] == pytest.approx(min(history.history["val_loss"]), rel=1e-5)


def test_keras_model_checkpoint_refuses_a_weights_file_not_named_weights_h5(tmp_path):
    from hpctrain.keras.callbacks import ModelCheckpoint

    with pytest.raises(ValueError, match=r"must end in `\.weights\.h5`"):
        ModelCheckpoint(tmp_path / "best.weights.safetensors", save_weights_only=True)


# ---- the engine's own callbacks, on the native API -------------------------------------------------

CPU = hpctrain.make_plan(device="cpu")


def _trainer(lr=0.08, optimizer="sgd"):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt = torch.optim.SGD(module.parameters(), lr=lr) if optimizer == "sgd" else torch.optim.Adam(module.parameters())
    return hpctrain.Trainer(module, loss=torch.nn.CrossEntropyLoss(), optimizer=opt, metrics=["accuracy"], plan=CPU)


def test_engine_learning_rate_scheduler_sets_each_epochs_rate_and_logs_it(rng):
    x, y = small_classification(rng)
    trainer = _trainer(0.08)
    seen = []
    history = trainer.fit(x, y, epochs=4, verbose=0, callbacks=[
        engine_callbacks.LearningRateScheduler(lambda epoch, lr: lr if epoch == 0 else lr / 2),
        engine_callbacks.LambdaCallback(
            on_epoch_begin=lambda epoch, logs: seen.append(trainer.optimizer.param_groups[0]["lr"]))])
    assert history.history["learning_rate"] == pytest.approx([0.08, 0.04, 0.02, 0.01])
    assert seen == pytest.approx([0.08, 0.04, 0.02, 0.01])  # the rate in force during each epoch
    one_argument = trainer.fit(x, y, epochs=2, verbose=0,
                               callbacks=[engine_callbacks.LearningRateScheduler(lambda epoch: 0.5 ** epoch)])
    assert one_argument.history["learning_rate"] == pytest.approx([1.0, 0.5])
    with pytest.raises(hpctrain.errors.ConfigError, match="it must return a number"):
        trainer.fit(x, y, epochs=1, verbose=0,
                    callbacks=[engine_callbacks.LearningRateScheduler(lambda epoch: "fast")])


def test_engine_reduce_lr_on_plateau_follows_patience_and_cooldown_and_min_lr(rng):
    x, y = small_classification(rng)
    trainer = _trainer(1e-9)  # too small to move val_loss: a plateau
    history = trainer.fit(x, y, epochs=7, verbose=0, validation_data=(x, y),
                          callbacks=[engine_callbacks.ReduceLROnPlateau(factor=0.5, patience=2, cooldown=1)])
    assert history.history["learning_rate"] == pytest.approx([1e-9, 1e-9, 1e-9, 5e-10, 5e-10, 2.5e-10, 2.5e-10])
    trainer = _trainer(1e-9)
    trainer.fit(x, y, epochs=6, verbose=0, validation_data=(x, y),
                callbacks=[engine_callbacks.ReduceLROnPlateau(factor=0.1, patience=1, min_lr=4e-10)])
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(4e-10)


def test_engine_csv_logger_writes_the_history_and_appends(tmp_path, rng):
    x, y = small_classification(rng)
    path = tmp_path / "log.csv"
    trainer = _trainer(optimizer="adam")
    history = trainer.fit(x, y, epochs=3, verbose=0, callbacks=[engine_callbacks.CSVLogger(path)])
    rows = list(csv.reader(open(path)))
    assert rows[0] == ["epoch", "accuracy", "loss"]
    assert [int(r[0]) for r in rows[1:]] == [0, 1, 2]
    np.testing.assert_allclose([float(r[2]) for r in rows[1:]], history.history["loss"], rtol=1e-6)
    trainer.fit(x, y, epochs=2, verbose=0, callbacks=[engine_callbacks.CSVLogger(path, append=True)])
    rows = list(csv.reader(open(path)))
    assert len(rows) == 6 and rows.count(["epoch", "accuracy", "loss"]) == 1


def test_engine_model_checkpoint_best_only_saves_the_best_epochs_state_dict(tmp_path, rng):
    x, y = small_classification(rng)
    trainer = _trainer(0.5)
    best = engine_callbacks.ModelCheckpoint(tmp_path / "best.pt", monitor="val_loss", save_best_only=True,
                                            save_weights_only=True)
    best_weights = []
    record = engine_callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: best_weights.append(
        (logs["val_loss"], [w.copy() for w in trainer.get_weights()])))
    history = trainer.fit(x, y, epochs=4, verbose=0, validation_data=(x[:16], y[:16]), callbacks=[best, record])
    assert best.best == pytest.approx(min(history.history["val_loss"]))
    restored = _trainer()
    restored.load_weights(tmp_path / "best.pt")
    assert restored.evaluate(x[:16], y[:16], verbose=0)[0] == pytest.approx(min(history.history["val_loss"]), rel=1e-5)
    expected = min(best_weights, key=lambda item: item[0])[1]
    for a, b in zip(restored.get_weights(), expected):
        np.testing.assert_array_equal(a, b)


def test_engine_model_checkpoint_every_n_batches_and_bad_fields(tmp_path, rng):
    from hpctrain.errors import ConfigError

    x, y = small_classification(rng, n=64)
    trainer = _trainer(optimizer="adam")
    trainer.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[engine_callbacks.ModelCheckpoint(
        tmp_path / "b-{epoch}-{batch}.pt", save_weights_only=True, save_freq=3)])
    # batches 3 and 6 of 8: the third of epoch 1 and the second of epoch 2, counted from 1 as Keras names them
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b-1-3.pt", "b-2-2.pt"]
    with pytest.raises(ConfigError, match="names 'val_acc', which is not in the logs"):
        trainer.fit(x, y, epochs=1, verbose=0, callbacks=[engine_callbacks.ModelCheckpoint(
            tmp_path / "{val_acc}.pt", save_weights_only=True)])
    with pytest.raises(ConfigError, match="save_freq must be 'epoch' or a whole number"):
        engine_callbacks.ModelCheckpoint(tmp_path / "x.pt", save_freq=0)


class _RecordsTestAndPredictHooks(Callback):
    def __init__(self):
        super().__init__()
        self.calls = []

    def on_test_begin(self, logs=None):
        self.calls.append("test_begin")

    def on_test_batch_end(self, batch, logs=None):
        self.calls.append(f"test_batch_end {batch} {sorted(logs)}")

    def on_test_end(self, logs=None):
        self.calls.append(f"test_end {sorted(logs)}")

    def on_predict_begin(self, logs=None):
        self.calls.append("predict_begin")

    def on_predict_end(self, logs=None):
        self.calls.append("predict_end")


def test_evaluate_predict_and_validation_call_keras_test_and_predict_hooks(rng):
    x, y = small_classification(rng, n=40)
    model = _model("sgd")
    record = _RecordsTestAndPredictHooks()
    logs = model.evaluate(x, y, batch_size=20, verbose=0, callbacks=[record], return_dict=True)
    assert record.calls == ["test_begin", "test_batch_end 0 ['accuracy', 'loss']",
                            "test_batch_end 1 ['accuracy', 'loss']", "test_end ['accuracy', 'loss']"]
    assert sorted(logs) == ["accuracy", "loss"]
    record.calls.clear()
    model.predict(x, verbose=0, callbacks=[record])
    assert record.calls == ["predict_begin", "predict_end"]
    record.calls.clear()
    model.fit(x, y, epochs=1, batch_size=20, verbose=0, validation_split=0.5, callbacks=[record])
    assert record.calls == ["test_begin", "test_batch_end 0 ['accuracy', 'loss']",  # unprefixed, as in Keras
                            "test_end ['accuracy', 'loss']"]


def test_engine_auto_mode_follows_the_metric_name_or_asks():
    from hpctrain.errors import ConfigError
    from hpctrain.engine.callbacks import EarlyStopping, ModelCheckpoint
    from hpctrain.engine.callbacks import ReduceLROnPlateau as EngineReduceLROnPlateau

    assert EarlyStopping(monitor="val_count_correct").higher_is_better
    assert EarlyStopping(monitor="val_recall").higher_is_better and EarlyStopping(monitor="accuracy").higher_is_better
    assert not EarlyStopping(monitor="val_loss").higher_is_better
    assert not EngineReduceLROnPlateau(monitor="mean_absolute_error").higher_is_better
    with pytest.raises(ConfigError, match=r"mode='auto' cannot tell whether 'val_widgets' improves"):
        ModelCheckpoint("m.pt", monitor="val_widgets")
    assert EarlyStopping(monitor="val_widgets", mode="max").higher_is_better
