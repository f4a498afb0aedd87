"""The C++ step loop: the same kernels as the static step's Python, so bit-identical results."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import hpctrain
import hpctrain as tf
from hpctrain.engine import native
from hpctrain.errors import NonFiniteLossError
from hpctrain.keras.layers import Dense, Dropout

needs_loop = pytest.mark.skipif(native.compiler() is None or not native.enabled(),
                                reason="no C++ compiler: the C++ step loop cannot be built here")


def _keras_run(monkeypatch, use_loop, layers, loss, y, x, *, optimizer="adam", epochs=2, batch_size=16,
               shuffle=True, callbacks=()):
    monkeypatch.setenv("HPCTRAIN_NATIVE", "1" if use_loop else "0")
    tf.keras.utils.set_random_seed(7)
    model = tf.keras.Sequential(layers())
    model.compile(optimizer=optimizer, loss=loss, metrics=["mae" if y.dtype.kind == "f" else "accuracy"])
    history = model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=shuffle, verbose=0,
                        callbacks=list(callbacks))
    return model.get_weights(), history.history, model.plan.explain()


def _assert_identical(monkeypatch, *args, **kwargs):
    loop = _keras_run(monkeypatch, True, *args, **kwargs)
    python = _keras_run(monkeypatch, False, *args, **kwargs)
    assert "step_loop: C++" in loop[2]
    assert "step_loop: Python (off (HPCTRAIN_NATIVE=0))" in python[2]
    assert len(loop[0]) == len(python[0]), (f"the C++ loop's model has {len(loop[0])} weight arrays, the Python "
                                            f"step's {len(python[0])}")
    for a, b in zip(loop[0], python[0], strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit: the same kernels in the same order
    assert loop[1].keys() == python[1].keys()
    for key in python[1]:
        np.testing.assert_allclose(loop[1][key], python[1][key], rtol=1e-6)
    return loop


def test_assert_identical_reports_weight_lists_of_different_lengths(monkeypatch):
    # zip alone stopped at the shorter list: a missing weight array compared as equal.
    runs = iter([([np.zeros(2), np.ones(3)], {"loss": [1.0]}, "step_loop: C++"),
                 ([np.zeros(2)], {"loss": [1.0]}, "step_loop: Python (off (HPCTRAIN_NATIVE=0))")])
    monkeypatch.setitem(globals(), "_keras_run", lambda *args, **kwargs: next(runs))
    with pytest.raises(AssertionError, match="the C\\+\\+ loop's model has 2 weight arrays, the Python step's 1"):
        _assert_identical(monkeypatch)


CASES = {
    "relu_sparse_ce": (lambda: [Dense(12, activation="relu", input_shape=(9,)), Dense(4)],
                       tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), "labels"),
    "tanh_sigmoid_mse": (lambda: [Dense(12, activation="tanh", input_shape=(9,)), Dense(6, activation="sigmoid"),
                                  Dense(3)], "mse", "values"),
    "mae": (lambda: [Dense(5, activation="relu", input_shape=(9,)), Dense(2)], "mae", "values"),
    "binary_ce": (lambda: [Dense(8, activation="relu", input_shape=(9,)), Dense(1)],
                  tf.keras.losses.BinaryCrossentropy(from_logits=True), "binary"),
    "one_hot_ce": (lambda: [Dense(8, activation="relu", input_shape=(9,)), Dense(4)],
                   tf.keras.losses.CategoricalCrossentropy(from_logits=True), "one_hot"),
}


def _targets(kind, rng, n):
    labels = rng.integers(0, 4, size=n)
    return {"labels": labels, "values": rng.normal(size=(n, 3 if kind == "values" else 1)).astype("float32"),
            "binary": rng.integers(0, 2, size=(n, 1)).astype("float32"),
            "one_hot": np.eye(4, dtype="float32")[labels]}[kind]


@needs_loop
@pytest.mark.parametrize("case", sorted(CASES))
def test_loop_and_python_steps_give_identical_weights(monkeypatch, rng, case):
    layers, loss, kind = CASES[case]
    n = 100  # six batches of 16 and a partial one of 4: two programs
    y = _targets(kind, rng, n)
    if case == "mae":
        y = y[:, :2].copy()
    x = rng.normal(size=(n, 9)).astype("float32")
    _assert_identical(monkeypatch, layers, loss, y, x)


@needs_loop
def test_loop_matches_unshuffled_and_adamw(monkeypatch, rng):
    x, y = rng.normal(size=(70, 9)).astype("float32"), rng.integers(0, 4, size=70)
    layers, loss, _ = CASES["relu_sparse_ce"]
    _assert_identical(monkeypatch, layers, loss, y, x, shuffle=False,
                      optimizer=tf.keras.optimizers.AdamW(learning_rate=0.01, weight_decay=0.05))


@needs_loop
def test_loop_hands_onednn_gradients_like_the_python_step(monkeypatch, rng):
    """Batches of 256 through a 785x16 layer: the weight gradient is oneDNN's and handed to Adam."""
    x, y = rng.normal(size=(600, 784)).astype("float32"), rng.integers(0, 10, size=600)
    layers = lambda: [Dense(1024, activation="relu", input_shape=(784,)), Dense(10)]  # noqa: E731
    weights, _, explained = _assert_identical(monkeypatch, layers,
                                              tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                                              y, x, batch_size=256, epochs=1)
    assert "oneDNN for" in explained


TORCH_MIDDLES = {"sigmoid": lambda: [torch.nn.Sigmoid()],
                 "relu_dropout": lambda: [torch.nn.ReLU(), torch.nn.Dropout(0.4)]}


@needs_loop
@pytest.mark.parametrize("middle", sorted(TORCH_MIDDLES))
def test_torch_sequential_runs_in_the_loop_bit_for_bit(monkeypatch, rng, middle):
    x, y = rng.normal(size=(60, 5)).astype("float32"), rng.integers(0, 3, size=60)
    results = []
    for flag in ("1", "0"):
        monkeypatch.setenv("HPCTRAIN_NATIVE", flag)
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(5, 7), *TORCH_MIDDLES[middle](), torch.nn.Linear(7, 3))
        trainer = hpctrain.Trainer(net, loss=hpctrain.engine.losses.CrossEntropy(sparse=True, from_logits=True),
                                   optimizer="adam")
        torch.manual_seed(5)  # the dropout masks' stream
        trainer.fit(x, y, epochs=2, batch_size=8, verbose=0)
        results.append(([p.detach().clone() for p in net.parameters()], trainer.plan.explain()))
    assert "step_loop: C++" in results[0][1]
    for a, b in zip(results[0][0], results[1][0]):
        assert torch.equal(a, b)


@needs_loop
def test_steps_that_need_python_between_them_say_why(monkeypatch, rng):
    x, y = rng.normal(size=(40, 9)).astype("float32"), rng.integers(0, 4, size=40)
    loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    per_batch = tf.keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: None)
    *_, explained = _keras_run(monkeypatch, True, CASES["relu_sparse_ce"][0], loss, y, x, callbacks=[per_batch])
    assert "step_loop: Python (a callback listens to every batch)" in explained


@needs_loop
def test_dropout_draws_the_same_masks_in_the_loop(monkeypatch, rng):
    """The mask is drawn by the same ATen calls from the same generator: the same values drop."""
    x, y = rng.normal(size=(90, 9)).astype("float32"), rng.integers(0, 4, size=90)
    layers = lambda: [Dense(12, activation="relu", input_shape=(9,)), Dropout(0.3), Dense(8, activation="tanh"),  # noqa: E731
                      Dropout(0.5), Dense(4)]
    _assert_identical(monkeypatch, layers, tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), y, x)


@needs_loop
@pytest.mark.parametrize("features,units", [(9, 12), (400, 400)])  # the wide one's gradients are scanned in parallel
def test_a_non_finite_step_in_the_loop_stops_training_as_in_python(monkeypatch, rng, features, units):
    x, y = rng.normal(size=(40, features)).astype("float32"), rng.integers(0, 4, size=40)
    x[23] = 3e38 * (-1.0) ** np.arange(features)  # in the second batch of 16: the products overflow, inf - inf
    kept, explained = [], []
    for flag in ("1", "0"):
        monkeypatch.setenv("HPCTRAIN_NATIVE", flag)
        tf.keras.utils.set_random_seed(3)
        model = tf.keras.Sequential([Dense(units, activation="relu", input_shape=(features,)), Dense(4)])
        model.compile(optimizer="adam", loss=CASES["relu_sparse_ce"][1])
        with pytest.raises(NonFiniteLossError, match="at epoch 1, step 2 of 3 done in that epoch"):
            model.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
        kept.append(model.get_weights())
        explained.append(model.plan.explain())
    assert "step_loop: C++" in explained[0]
    assert all(np.isfinite(w).all() for w in kept[0])  # the bad step's and later updates were skipped
    for a, b in zip(*kept):
        np.testing.assert_array_equal(a, b)


def test_a_failed_build_leaves_training_on_the_python_loop(tmp_path, rng):
    """A compiler that fails: the reason is kept, doctor says it, and fit trains as before."""
    program = (
        "import numpy as np, hpctrain as tf\n"
        "from hpctrain.engine import native\n"
        "from hpctrain.keras.layers import Dense\n"
        "assert not native.build()\n"
        "print(native.status())\n"
        "m = tf.keras.Sequential([Dense(3, input_shape=(4,))])\n"
        "m.compile(optimizer='adam', loss='mse')\n"
        "h = m.fit(np.ones((8, 4), 'float32'), np.ones((8, 3), 'float32'), epochs=1, verbose=0)\n"
        "print([line for line in m.plan.explain().splitlines() if line.startswith('step_loop')][0])\n"
    )
    env = dict(os.environ, CXX="/bin/false", HPCTRAIN_NATIVE_DIR=str(tmp_path), HPCTRAIN_NATIVE="1")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    status, step_loop = result.stdout.strip().splitlines()
    assert status.startswith("C++ step loop build failed (see ")
    assert step_loop.startswith("step_loop: Python (C++ step loop build failed")


def test_an_unwritable_build_directory_leaves_training_on_the_python_loop(rng):
    program = (
        "import numpy as np, hpctrain as tf\n"
        "from hpctrain.keras.layers import Dense\n"
        "m = tf.keras.Sequential([Dense(3, input_shape=(4,))])\n"
        "m.compile(optimizer='adam', loss='mse')\n"
        "for _ in range(2):\n"
        "    h = m.fit(np.ones((8, 4), 'float32'), np.ones((8, 3), 'float32'), epochs=2, verbose=0)\n"
        "    print(len(h.history['loss']))\n"
        "    print([line for line in m.plan.explain().splitlines() if line.startswith('step_loop')][0])\n"
    )
    env = dict(os.environ, HPCTRAIN_NATIVE_DIR="/proc/hpctrain-native", HPCTRAIN_NATIVE="1")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    epochs, first, epochs_again, second = result.stdout.strip().splitlines()
    assert epochs == epochs_again == "2"
    assert first.startswith("step_loop: Python (C++ step loop not built yet")
    # the build attempted after the first fit failed to create its directory; the reason is kept
    assert second.startswith("step_loop: Python (C++ step loop unavailable: cannot build in /proc/hpctrain-native")


def _doctor(*args, **env):
    return subprocess.run([sys.executable, "-m", "hpctrain.cli", "doctor", *args], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, **env))


@needs_loop
def test_doctor_builds_and_reports_the_step_loop():
    built = _doctor("--build")  # the session's build, found in the cache
    assert (built.returncode, built.stdout.strip()) == (0, "C++ step loop loaded")
    assert _doctor().stdout.rstrip().endswith("Step loop\n  C++ step loop loaded")


def test_doctor_build_without_a_working_compiler_fails_with_the_reason(tmp_path):
    result = _doctor("--build", CXX="/bin/false", HPCTRAIN_NATIVE_DIR=str(tmp_path), HPCTRAIN_NATIVE="1")
    assert result.returncode == 1
    assert result.stdout.startswith(f"C++ step loop build failed (see {tmp_path}")
    off = _doctor("--build", HPCTRAIN_NATIVE="0")
    assert (off.returncode, off.stdout.strip()) == (1, "off (HPCTRAIN_NATIVE=0)")


@needs_loop
def test_the_first_fit_starts_the_build_as_it_ends_and_a_later_fit_uses_the_loop(tmp_path):
    program = (
        "import numpy as np, hpctrain as tf\n"
        "from hpctrain.engine import native\n"
        "from hpctrain.keras.layers import Dense\n"
        "m = tf.keras.Sequential([Dense(3, input_shape=(4,))])\n"
        "m.compile(optimizer='adam', loss='mse')\n"
        "def step_loop():\n"
        "    m.fit(np.ones((8, 4), 'float32'), np.ones((8, 3), 'float32'), epochs=1, verbose=0)\n"
        "    return [line for line in m.plan.explain().splitlines() if line.startswith('step_loop')][0]\n"
        "print(step_loop())\n"
        "assert native.build()\n"
        "print(step_loop())\n"
    )
    env = dict(os.environ, HPCTRAIN_NATIVE_DIR=str(tmp_path), HPCTRAIN_NATIVE="1")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "step_loop: Python (C++ step loop not built yet: built in the background when a fit that can use it ends)",
        "step_loop: C++ (each run of gathered batches is one call)"]
    assert [name for name in os.listdir(next(tmp_path.iterdir())) if not name.startswith(".")] == ["step_loop.so"]
