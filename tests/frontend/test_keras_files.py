"""What a Keras user saves after training with hpctrain is a real Keras file: Keras on JAX loads
it, trains on from its optimizer state, and hpctrain loads what Keras on JAX writes."""

import json
import os
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest

import hpctrain
from hpctrain import keras
from hpctrain.keras import keras_files
from hpctrain.keras.session import session_of

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH, SAMPLES, EPOCHS = 16, 96, 5
STEPS = SAMPLES // BATCH  # 6 updates an epoch; 30 after the first fit
COMPARED = ("loss", "loss_weights", "metrics", "weighted_metrics", "optimizer")

sys.path.insert(0, HERE)
from jax_keras import build  # noqa: E402  (the same model on both sides)


def _data():
    rng = np.random.default_rng(3)
    return rng.normal(size=(SAMPLES, 6)).astype("float32"), rng.integers(0, 3, size=SAMPLES)


def _run_jax_keras(folder, *commands: str) -> dict[str, tuple[dict, dict]]:
    """Each command's (facts, arrays) from one Keras-on-JAX process (JAX's import and compiles are
    the cost here, so both directions share the process)."""
    pytest.importorskip("jax")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HPCTRAIN", "PYTHONPATH"))}
    env.update(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", PYTHONPATH="")
    done = subprocess.run([sys.executable, os.path.join(HERE, "jax_keras.py"), str(folder), *commands], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    results = {}
    for command in commands:
        with open(os.path.join(folder, f"{command}.json")) as facts:
            results[command] = json.load(facts), dict(np.load(os.path.join(folder, f"{command}.npz")))
    return results


def _trained(x, y, epochs=EPOCHS):
    model = build(keras)
    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0)
    return model


def _numbered(arrays: dict, prefix: str) -> list:
    return [arrays[f"{prefix}{i}"] for i in range(sum(k.startswith(prefix) for k in arrays))]


def _assert_all_close(actual, expected, atol):
    assert len(actual) == len(expected)
    for index, (a, e) in enumerate(zip(actual, expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), atol=atol, rtol=0, err_msg=f"array {index}")


def _compared(config: dict) -> dict:
    return json.loads(json.dumps({key: config[key] for key in COMPARED}))


# ---- what is written ----------------------------------------------------------------------------


@pytest.mark.parametrize("public", sorted(set(keras_files.public_names().values())))
def test_torch_optimizers_serialize_under_their_public_names(public):
    optimizer = getattr(keras.optimizers, public.rsplit(".", 1)[1])()
    assert type(optimizer).__module__.startswith("keras.src.backend.torch.")  # the torch-only subclass
    config = keras.optimizers.serialize(optimizer)
    assert (config["module"], config["class_name"], config["registered_name"]) == (
        "keras.optimizers", public.rsplit(".", 1)[1], None)
    again = keras.optimizers.deserialize(config)
    assert type(again) is type(optimizer) and again.get_config() == optimizer.get_config()


def test_every_torch_optimizer_class_has_a_public_name():
    from keras.src.backend.torch.optimizers import torch_optimizer

    assert len(keras_files.public_names()) >= 9
    assert {c.__name__ for c in keras_files.public_names()} >= {
        "Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Adadelta", "Adamax", "Lion", "Nadam"}
    assert torch_optimizer.TorchOptimizer not in keras_files.public_names()
    keras_files.install()  # idempotent
    assert len(keras_files.public_names()) >= 9


def test_the_keras_file_names_the_public_optimizer(tmp_path):
    x, y = _data()
    model = _trained(x, y, epochs=1)
    path = str(tmp_path / "model.keras")
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        written = json.loads(archive.read("config.json"))["compile_config"]["optimizer"]
    assert (written["module"], written["class_name"], written["registered_name"]) == ("keras.optimizers", "Adam", None)
    assert model.get_compile_config()["optimizer"]["module"] == "keras.optimizers"


# ---- (a) hpctrain's file in Keras on JAX --------------------------------------------------------


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    """An hpctrain-trained model saved to ``hpctrain.keras``, and one Keras-on-JAX process that
    continues it (``continue``) and writes a file of its own (``write``)."""
    folder = tmp_path_factory.mktemp("jax-round-trip")
    x, y = _data()
    np.savez(folder / "data.npz", x=x, y=y)
    with pytest.MonkeyPatch.context() as patch:  # a module fixture: set up as the function fixtures would
        patch.setenv("HPCTRAIN_CACHE_DIR", str(tmp_path_factory.mktemp("hpctrain-cache")))
        keras.utils.set_random_seed(1234)
        model = _trained(x, y)
    saved = dict(iterations=int(model.optimizer.iterations.numpy()), trained_by_engine=session_of(model).trainer
                 is not None, predictions=model.predict(x, batch_size=BATCH, verbose=0), weights=model.get_weights(),
                 moments=[v.numpy() for v in model.optimizer.variables])
    model.save(str(folder / "hpctrain.keras"))
    return dict(folder=folder, model=model, saved=saved, jax=_run_jax_keras(folder, "continue", "write"))


def test_keras_on_jax_loads_and_trains_on_from_an_hpctrain_file(round_trip):
    x, y = _data()
    model, saved = round_trip["model"], round_trip["saved"]
    assert saved["trained_by_engine"]  # trained by the engine, not Keras's loop
    assert saved["iterations"] == EPOCHS * STEPS
    predictions, weights, moments = saved["predictions"], saved["weights"], saved["moments"]

    facts, arrays = round_trip["jax"]["continue"]

    assert facts["backend"] == "jax" and facts["compiled"]
    # Keras's own Adam there (not the torch-only subclass, whose update fails on JAX's arrays).
    assert facts["optimizer_class"].endswith(".Adam") and ".torch." not in facts["optimizer_class"]
    assert _compared(facts["compile_config"]) == _compared(model.get_compile_config())
    np.testing.assert_allclose(arrays["predictions"], predictions, atol=1e-5, rtol=0)
    _assert_all_close(_numbered(arrays, "weight"), weights, atol=0)
    # The optimizer's state as saved: the count and the moments (non-zero) the engine wrote back.
    assert facts["loaded_iterations"] == EPOCHS * STEPS
    _assert_all_close(_numbered(arrays, "optimizer"), moments, atol=0)
    assert all(np.abs(m).max() > 0 for m, path in zip(moments, facts["optimizer_variables"])
               if "momentum" in path or "velocit" in path)
    assert facts["continued_iterations"] == (EPOCHS + 1) * STEPS
    # One more epoch here, from the same state, lands where Keras on JAX's lands.
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == (EPOCHS + 1) * STEPS
    _assert_all_close(model.get_weights(), _numbered(arrays, "continued"), atol=1e-4)


# ---- (b) Keras on JAX's file in hpctrain --------------------------------------------------------


def test_hpctrain_loads_and_trains_on_from_a_keras_on_jax_file(round_trip):
    x, y = _data()
    facts, arrays = round_trip["jax"]["write"]

    model = keras.models.load_model(str(round_trip["folder"] / "jax.keras"))
    assert model.compiled
    session_of(model).use_plan(hpctrain.make_plan(threads=1))
    assert _compared(model.get_compile_config()) == _compared(facts["compile_config"])
    np.testing.assert_allclose(model.predict(x, batch_size=BATCH, verbose=0), arrays["predictions"],
                               atol=1e-5, rtol=0)
    assert int(model.optimizer.iterations.numpy()) == facts["loaded_iterations"] == EPOCHS * STEPS
    _assert_all_close([v.numpy() for v in model.optimizer.variables], _numbered(arrays, "optimizer"), atol=0)

    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert session_of(model).trainer is not None
    # The file's jit_compile=True (Keras on JAX's "auto" as saved) leaves compiling to the plan: a
    # short fit is not worth torch.compile's seconds.
    assert model._hpctrain_compile["jit_compile"] is True and model.plan.compile is False
    assert int(model.optimizer.iterations.numpy()) == facts["continued_iterations"] == (EPOCHS + 1) * STEPS
    _assert_all_close(model.get_weights(), _numbered(arrays, "continued"), atol=1e-4)


# ---- (c) weights files --------------------------------------------------------------------------


def test_weights_file_round_trip_after_an_hpctrain_fit(tmp_path):
    x, y = _data()
    model = _trained(x, y, epochs=2)
    path = str(tmp_path / "model.weights.h5")
    model.save_weights(path)
    fresh = build(keras)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras: the unbuilt optimizer skips the file's optimizer variables
        fresh.load_weights(path)
    _assert_all_close(fresh.get_weights(), model.get_weights(), atol=0)
    np.testing.assert_allclose(fresh.predict(x, batch_size=BATCH, verbose=0),
                               model.predict(x, batch_size=BATCH, verbose=0), atol=1e-6, rtol=0)
    # The file holds the optimizer's state too; a built optimizer reads it (an unbuilt one skips it).
    built = build(keras)
    built.optimizer.build(built.trainable_variables)
    built.load_weights(path)
    assert int(built.optimizer.iterations.numpy()) == 2 * STEPS
    _assert_all_close([v.numpy() for v in built.optimizer.variables],
                      [v.numpy() for v in model.optimizer.variables], atol=0)


# ---- (d) hpctrain's file in hpctrain ------------------------------------------------------------


@pytest.fixture(params=[True, False], ids=["engine", "keras-loop"])
def engine(request):
    hpctrain.keras.use_engine(request.param)
    yield request.param
    hpctrain.keras.use_engine(True)


def test_load_model_gives_a_compiled_model_that_trains_on(tmp_path, engine):
    x, y = _data()
    model = _trained(x, y, epochs=2)
    path = str(tmp_path / "model.keras")
    model.save(path)
    moments = [v.numpy() for v in model.optimizer.variables]

    loaded = keras.models.load_model(path)
    assert loaded.compiled
    assert _compared(loaded.get_compile_config()) == _compared(model.get_compile_config())
    assert type(loaded.optimizer) is type(model.optimizer)
    assert int(loaded.optimizer.iterations.numpy()) == 2 * STEPS
    _assert_all_close([v.numpy() for v in loaded.optimizer.variables], moments, atol=0)
    np.testing.assert_allclose(loaded.predict(x, batch_size=BATCH, verbose=0),
                               model.predict(x, batch_size=BATCH, verbose=0), atol=1e-6, rtol=0)

    loaded.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert int(loaded.optimizer.iterations.numpy()) == 3 * STEPS
    assert (session_of(loaded).trainer is not None) == engine
    # From the saved state, one more epoch lands where the original model's does.
    _assert_all_close(loaded.get_weights(), model.get_weights(), atol=1e-5)
