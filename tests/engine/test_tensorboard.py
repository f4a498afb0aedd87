"""The engine's TensorBoard callback (the native API's) writes real event files: read back with
tensorboard's own reader. Keras models get Keras's own TensorBoard callback."""

import sys

import numpy as np
import pytest
import torch

import hpctrain
from conftest import small_classification
from hpctrain.engine.callbacks import TensorBoard
from hpctrain.errors import ConfigError, MissingDependencyError

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _read(folder):
    reader = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0})
    reader.Reload()
    return reader


def _scalars(reader, tag):
    return [(event.step, event.value) for event in reader.Scalars(tag)]


def _model():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    return hpctrain.Trainer(module, loss=torch.nn.CrossEntropyLoss(), metrics=["accuracy"],
                            optimizer=torch.optim.Adam(module.parameters(), lr=0.01),
                            plan=hpctrain.make_plan(device="cpu"))


def test_epoch_scalars_and_histograms_equal_the_history(tmp_path, rng):
    x, y = small_classification(rng, n=48, features=5)
    model = _model()
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0, validation_data=(x[:16], y[:16]),
                        callbacks=[TensorBoard(log_dir=tmp_path, histogram_freq=2)])
    train, validation = _read(tmp_path / "train"), _read(tmp_path / "validation")
    for name in ("loss", "accuracy"):
        steps, values = zip(*_scalars(train, "epoch_" + name))
        assert steps == (0, 1, 2)
        np.testing.assert_allclose(values, history.history[name], rtol=1e-6)  # float32 in the file
        steps, values = zip(*_scalars(validation, "epoch_" + name))
        np.testing.assert_allclose(values, history.history["val_" + name], rtol=1e-6)
    assert [value for _, value in _scalars(train, "epoch_learning_rate")] == pytest.approx([0.01] * 3)
    kernel_tag = "0/weight/histogram"  # a module's parameters by name
    assert sorted(train.Tags()["histograms"]) == sorted(
        f"{layer}/{weight}/histogram" for layer in ("0", "2") for weight in ("weight", "bias"))
    histograms = train.Histograms(kernel_tag)
    assert [h.step for h in histograms] == [0, 2]  # every second epoch
    kernel = model.module[0].weight.detach().numpy()
    last = histograms[-1].histogram_value
    assert (last.num, last.min, last.max) == (kernel.size, pytest.approx(kernel.min()), pytest.approx(kernel.max()))
    assert last.sum == pytest.approx(float(kernel.sum()), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("update_freq, logged_steps", [("batch", [1, 2, 3, 4, 5, 6]), (4, [4])])
def test_batch_scalars_follow_update_freq(update_freq, logged_steps, tmp_path, rng):
    x, y = small_classification(rng, n=48, features=5)
    batch_logs = []

    class Record(TensorBoard):
        def _log_batch(self, batch, logs=None):
            batch_logs.append(dict(logs))
            super()._log_batch(batch, logs)

    _model().fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[Record(log_dir=tmp_path,
                                                                             update_freq=update_freq)])
    written = _scalars(_read(tmp_path / "train"), "batch_loss")
    assert [step for step, _ in written] == logged_steps
    np.testing.assert_allclose([value for _, value in written], [batch_logs[s - 1]["loss"] for s in logged_steps],
                               rtol=1e-6)


def test_a_missing_tensorboard_names_the_install_command(tmp_path, rng, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were absent
    x, y = small_classification(rng, n=16, features=5)
    with pytest.raises(MissingDependencyError, match=r"not installed\. Install it with: pip install tensorboard"):
        _model().fit(x, y, epochs=1, verbose=0, callbacks=[TensorBoard(log_dir=tmp_path)])


def test_bad_tensorboard_arguments_are_rejected():
    with pytest.raises(ConfigError, match=r"update_freq must be 'epoch', 'batch' or a whole number .* got 0"):
        TensorBoard(update_freq=0)
    with pytest.raises(ConfigError, match="profile_batch and embeddings are not supported yet"):
        TensorBoard(profile_batch=5)


def test_a_keras_model_gets_keras_own_tensorboard_which_needs_tensorflow(tmp_path, rng):
    """Keras's TensorBoard callback writes with tf.summary: without TensorFlow, Keras's own error."""
    import importlib.util

    from hpctrain.keras import Input, Sequential, callbacks, layers

    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("TensorFlow is installed: Keras's TensorBoard works as Keras documents")
    x, y = small_classification(rng, n=32, features=5)
    model = Sequential([Input((5,)), layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    with pytest.raises(ModuleNotFoundError, match="tensorflow"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[callbacks.TensorBoard(log_dir=str(tmp_path))])
