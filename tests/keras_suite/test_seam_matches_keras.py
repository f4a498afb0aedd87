"""Quick checks of what Keras's own tests found the seam doing differently from Keras (the full
Keras tests run in test_keras_own_tests.py, in minutes; these run in seconds)."""

from __future__ import annotations

import numpy as np
import pytest

from hpctrain import keras
from hpctrain.keras import layers, routing, session


class CallCounter(layers.Layer):
    def __init__(self):
        super().__init__()
        self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False)

    def call(self, x):
        self.calls.assign_add(1)
        return x


def _data(rows=8, features=3, outputs=1, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((rows, features), dtype=np.float32), rng.random((rows, outputs), dtype=np.float32)


def _runs_on_engine(model, x, y, callbacks=None) -> bool:
    return routing.why_keras_fits(model, x, y, None, callbacks) is None


def test_the_model_runs_once_per_batch_as_in_keras():
    model = keras.Sequential([layers.Input((3,)), CallCounter(), layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data()
    assert _runs_on_engine(model, x, y)
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert int(model.layers[0].calls.numpy()) == 4  # no call of its own to learn the output shape


def test_compiled_metrics_exist_for_monitors_in_auto_mode():
    model = keras.Sequential([layers.Input((3,)), layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", metrics=["mse", keras.metrics.MeanAbsoluteError()])
    assert len(model.metrics) == 2  # loss tracker and compiled metrics, as Keras lists them
    x, y = _data()
    stopper = keras.callbacks.EarlyStopping(monitor="mse", patience=1)  # mode="auto" reads the direction
    history = model.fit(x, y, epochs=3, verbose=0, callbacks=[stopper])
    assert sorted(history.history) == ["loss", "mean_absolute_error", "mse"]
    assert [m.name for m in model.metrics[1].metrics] == ["mse", "mean_absolute_error"]


def test_backup_and_restore_resumes_at_the_restored_epoch(tmp_path):
    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("interrupted")

    model = keras.Sequential([layers.Input((3,)), CallCounter(), layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data(10)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(x, y, batch_size=4, epochs=6, verbose=0, callbacks=[backup, Interrupt()])
    assert int(model.layers[0].calls.numpy()) == 6
    history = model.fit(x, y, batch_size=4, epochs=5, verbose=0, callbacks=[backup])
    assert history.epoch == [2, 3, 4]
    assert int(model.layers[0].calls.numpy()) == 15


def test_constraints_hold_with_the_mapped_optimizer():
    model = keras.Sequential([layers.Input((3,)), layers.Dense(2, kernel_constraint="non_neg")])
    model.compile(optimizer="adam", loss="mse")
    x, _ = _data()
    model.fit(x, -np.ones((8, 2), np.float32), epochs=3, verbose=0)
    assert model.layers[0].kernel.numpy().min() >= 0.0


def test_batch_hooks_see_keras_batches():
    class Counts(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.test_batches = self.predict_batches = 0

        def on_test_batch_end(self, batch, logs=None):
            self.test_batches += 1

        def on_predict_batch_end(self, batch, logs=None):
            self.predict_batches += 1

    model = keras.Sequential([layers.Input((3,)), layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data(40)
    counts = Counts()
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, validation_data=(x[:6], y[:6]), callbacks=[counts])
    assert counts.test_batches == 2 * 2  # validation in batches of batch_size, as in Keras
    counts.test_batches = 0
    model.evaluate(x, y, verbose=0, callbacks=[counts])
    assert counts.test_batches == 2  # Keras's default batch of 32
    model.predict(x, batch_size=8, verbose=0, callbacks=[counts])
    assert counts.predict_batches == 5


def test_keras_loop_where_the_engine_differs():
    model = keras.Sequential([layers.Input((3,)), layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data()
    assert _runs_on_engine(model, x, y)
    assert not _runs_on_engine(model, x, y, [keras.callbacks.TerminateOnNaN()])
    y_inf = y.copy()
    y_inf[0] = np.inf
    assert not _runs_on_engine(model, x, y_inf)
    history = model.fit(x, y_inf, batch_size=4, verbose=0)  # Keras trains on it; the loss is not finite
    assert not np.isfinite(history.history["loss"][0])


def test_a_model_without_trainable_weights_fits_on_keras():
    class Counting(keras.Model):
        def __init__(self):
            super().__init__()
            self.count = self.add_variable(shape=(), initializer="zeros", trainable=False)

        def call(self, x):
            self.count.assign(self.count + 1)
            return x

    model = Counting()
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data(8, 1)
    model.fit(x, y, batch_size=2, verbose=0)
    assert int(model.count.numpy()) == 4
    assert model.__dict__.get("_hpctrain_session") is None or isinstance(model._hpctrain_session,
                                                                          session.KerasSession)


def _resume_from_the_older_backup(tmp_path, engine: bool):
    """Interrupted at the third epoch's end; the newest backup corrupted, so BackupAndRestore
    restores the one before it, optimizer state included."""
    from hpctrain.keras import use_engine

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("interrupted")

    use_engine(engine)
    try:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([layers.Input((3,)), layers.Dense(2)])
        model.compile(optimizer="adam", loss="mse")
        x, y = _data(20, 3, 2)
        backup = keras.callbacks.BackupAndRestore(str(tmp_path / f"backup-{engine}"), double_checkpoint=True)
        with pytest.raises(RuntimeError, match="interrupted"):
            model.fit(x, y, batch_size=4, epochs=6, verbose=0, shuffle=False, callbacks=[backup, Interrupt()])
        with open(backup._weights_path, "w") as corrupted:
            corrupted.write("0")
        model.fit(x, y, batch_size=4, epochs=6, verbose=0, shuffle=False, callbacks=[backup])
        return int(model.optimizer.iterations.numpy()), model.get_weights()
    finally:
        use_engine(True)


def test_optimizer_state_restored_by_backup_and_restore_is_trained_on(tmp_path):
    iterations, weights = _resume_from_the_older_backup(tmp_path, engine=True)
    keras_iterations, keras_weights = _resume_from_the_older_backup(tmp_path, engine=False)
    assert iterations == keras_iterations == 30
    for ours, theirs in zip(weights, keras_weights):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_unknown_package_attributes_are_attribute_errors():
    """torch.compile's cache keys (Keras's jit_compile=True) and inspect look names up on modules they
    meet and expect AttributeError for the ones a module lacks."""
    import hpctrain

    for name in ("torch", "_mock_name", "__wrapped__"):
        assert not hasattr(hpctrain, name)
