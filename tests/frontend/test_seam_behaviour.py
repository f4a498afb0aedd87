"""What a Keras user sees around fit on hpctrain: callbacks, routing, switches, errors."""

import os
import subprocess
import sys

import numpy as np
import pytest

import hpctrain.keras as hk
from hpctrain import keras
from twins import classification_data, keras_own_loop, max_difference, twin_fits

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def classification():
    return classification_data()


def _mlp(optimizer="adam"):
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_hpctrain_keras_is_the_real_keras():
    import keras as real

    assert hk.Model is real.Model and hk.layers.Dense is real.layers.Dense
    from hpctrain.keras.optimizers.schedules import CosineDecay

    assert CosineDecay is real.optimizers.schedules.CosineDecay
    assert real.config.backend() == "torch"


def test_a_callback_that_stops_training_and_reduces_the_rate_is_obeyed(classification):
    x, y = classification
    seen = []

    class StopAfterTwo(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, float(self.model.optimizer.learning_rate.numpy())))
            self.model.optimizer.learning_rate = 0.5 * float(self.model.optimizer.learning_rate.numpy())
            if epoch == 1:
                self.model.stop_training = True

    def build():
        return _mlp("sgd")

    (ours, history), (reference, reference_history) = twin_fits(build, x, y, epochs=5, batch_size=32,
                                                                 callbacks=[StopAfterTwo()])
    assert history.epoch == [0, 1] == reference_history.epoch
    assert seen[:2] == seen[2:]  # the same rates seen by ours, then by the reference run
    assert max_difference(ours.get_weights(), reference.get_weights()) < 1e-5


def test_early_stopping_restores_the_best_weights_as_keras_does(classification):
    x, y = classification

    def fit(model):
        stop = keras.callbacks.EarlyStopping(monitor="loss", patience=1, restore_best_weights=True,
                                             min_delta=10.0)
        return model.fit(x, y, epochs=6, batch_size=32, verbose=0, shuffle=False, callbacks=[stop])

    keras.utils.set_random_seed(3)
    ours = _mlp()
    history = fit(ours)
    keras.utils.set_random_seed(3)
    reference = _mlp()
    with keras_own_loop():
        reference_history = fit(reference)
    assert history.epoch == reference_history.epoch == [0, 1]
    assert max_difference(ours.get_weights(), reference.get_weights()) < 1e-5


def test_batch_hooks_get_keras_logs(classification):
    x, y = classification
    batches = []
    logger = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: batches.append((batch, logs)))
    keras.utils.set_random_seed(0)
    _mlp().fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[logger])
    assert [b for b, _ in batches] == [0, 1, 2]
    assert sorted(batches[-1][1]) == ["accuracy", "loss"]


def test_model_checkpoint_saves_a_keras_file_with_the_optimizer_state(classification, tmp_path):
    x, y = classification
    path = str(tmp_path / "model.keras")
    keras.utils.set_random_seed(0)
    model = _mlp()
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[keras.callbacks.ModelCheckpoint(path)])
    loaded = keras.models.load_model(path)
    assert int(loaded.optimizer.iterations.numpy()) == 6
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_a_custom_train_step_is_honoured_and_announced(classification, capsys):
    x, y = classification
    calls = []

    class Counting(keras.Sequential):
        def train_step(self, data):
            calls.append(1)
            return super().train_step(data)

    model = Counting([keras.Input((12,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=32, verbose=1)
    assert len(calls) == 3
    assert ("hpctrain: fit runs on the engine: Keras's own step functions in the engine's loop (the model defines "
            "its own train_step)") in capsys.readouterr().out


def test_verbose_fit_says_which_executor_runs(classification, capsys):
    x, y = classification
    _mlp().fit(x, y, epochs=1, batch_size=32, verbose=2)
    assert "hpctrain: fit runs on the engine: static" in capsys.readouterr().out


def test_the_engine_switch_runs_keras_own_loop(classification):
    x, y = classification
    model = _mlp()
    with keras_own_loop():
        model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert getattr(model, "_hpctrain_session", None) is None
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert model._hpctrain_session.trainer is not None


def test_hpctrain_options_on_a_call_that_keras_runs_are_refused(classification):
    x, y = classification
    model = _mlp()
    with keras_own_loop(), pytest.raises(TypeError, match="on_nonfinite apply to hpctrain's engine"):
        model.fit(x, y, epochs=1, verbose=0, on_nonfinite="skip_step")
    with pytest.raises(TypeError, match="unexpected keyword argument.*'epoch'"):
        model.fit(x, y, epoch=1)


def test_calling_a_model_gives_numpy_and_still_trains_by_hand():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    x = np.ones((3, 4), "float32")
    first = model(x[:1]).numpy()  # the TensorFlow beginner tutorial's first prediction
    assert first.shape == (1, 2)
    # Keras's torch custom-loop guide: call without training=, then backward and apply.
    optimizer = keras.optimizers.SGD(0.1)
    loss = keras.losses.MeanSquaredError()(np.zeros((3, 2), "float32"), model(x))
    model.zero_grad()
    loss.backward()
    before = model.get_weights()[1].copy()
    optimizer.apply([v.value.grad for v in model.trainable_weights], model.trainable_weights)
    np.testing.assert_allclose(model.get_weights()[1], before - 0.1 * (2 * first[0] / 2), rtol=1e-5)


def _python(code: str, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.path.join(REPO, "src"), **env})


def test_import_keras_after_hpctrain_is_accelerated_too():
    done = _python("import hpctrain, hpctrain.keras, keras, numpy as np\n"
                   "m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])\n"
                   "m.compile(optimizer='sgd', loss='mse')\n"
                   "m.fit(np.ones((8, 3), 'float32'), np.ones((8, 1), 'float32'), verbose=0)\n"
                   "print(type(m._hpctrain_session.trainer).__name__)")
    assert done.stdout.strip() == "Trainer", done.stderr


def test_another_keras_backend_is_refused_with_what_to_do():
    done = _python("import hpctrain.keras", KERAS_BACKEND="jax")
    assert done.returncode != 0
    assert "KERAS_BACKEND is 'jax'; hpctrain trains Keras on its PyTorch backend" in done.stderr


def test_engine_alone_does_not_import_keras():
    done = _python("import sys, hpctrain, hpctrain.engine, hpctrain.hardware; print('keras' in sys.modules)")
    assert done.stdout.strip() == "False", done.stderr


def test_steps_per_execution_and_jit_compile_are_accepted_on_torch(classification):
    x, y = classification
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", steps_per_execution=32)
    history = model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert len(history.history["loss"]) == 2 and history.history["loss"][1] < history.history["loss"][0]
    assert model._hpctrain_compile["steps_per_execution"] == 32


def test_keras_imported_first_with_another_backend_is_named():
    done = _python("import os; os.environ['KERAS_BACKEND'] = 'numpy'\n"
                   "import keras\nos.environ.pop('KERAS_BACKEND')\nimport hpctrain.keras")
    assert done.returncode != 0
    assert "Keras was imported before hpctrain with the 'numpy' backend" in done.stderr


def test_a_skipped_non_finite_step_leaves_batch_normalization_statistics_finite():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 12)).astype("float32")
    y = rng.integers(0, 3, 64)
    x[32:48] = 3e38  # one whole batch whose activations overflow
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(8, use_bias=False),
                              keras.layers.BatchNormalization(), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0, on_nonfinite="skip_step")
    assert history.history["skipped_steps"] == [1]
    statistics = [v.numpy() for v in model.non_trainable_variables if "moving" in v.path]
    assert len(statistics) == 2 and all(np.isfinite(s).all() for s in statistics)
    assert np.isfinite(model.predict(x[:32], verbose=0)).all()
