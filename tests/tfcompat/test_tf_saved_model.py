"""tf.saved_model.save / load: a directory around Keras's own .keras file."""

import json
import os

import numpy as np
import pytest

import hpctrain as tf

keras = tf.keras


def _trained_model():
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    x = np.linspace(-1, 1, 30, dtype=np.float32).reshape(10, 3)
    model.fit(x, x[:, :2] * 2.0, epochs=2, verbose=0)
    return model, x


def test_save_writes_a_keras_file_and_an_index(tmp_path):
    model, _ = _trained_model()
    export_dir = tmp_path / "exported"
    tf.saved_model.save(model, str(export_dir))
    assert sorted(os.listdir(export_dir)) == ["hpctrain_saved_model.json", "model.keras"]
    index = json.loads((export_dir / "hpctrain_saved_model.json").read_text())
    assert index == {"format": 1, "model_file": "model.keras", "keras_version": keras.__version__}


def test_load_gives_an_inference_callable_and_keras_reads_the_file(tmp_path):
    import keras as real_keras

    model, x = _trained_model()
    expected = np.asarray(model.predict(x, verbose=0))
    tf.saved_model.save(model, tmp_path)
    loaded = tf.saved_model.load(str(tmp_path))
    outputs = loaded(x)
    np.testing.assert_allclose(np.asarray(outputs), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(outputs.numpy(), expected, rtol=1e-6, atol=1e-7)
    served = loaded.signatures["serving_default"](x)
    np.testing.assert_allclose(np.asarray(served["output_0"]), expected, rtol=1e-6, atol=1e-7)
    again = real_keras.models.load_model(os.path.join(tmp_path, "model.keras"))
    np.testing.assert_allclose(again.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-7)
    for a, b in zip(again.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert loaded.keras_model.optimizer.iterations.numpy() == model.optimizer.iterations.numpy() == 2


def test_load_refuses_other_directories(tmp_path):
    with pytest.raises(OSError) as error:
        tf.saved_model.load(str(tmp_path))
    assert str(error.value) == (f"{tmp_path} is not a model directory written by tf.saved_model.save here "
                                "(no hpctrain_saved_model.json); TensorFlow SavedModels need TensorFlow to load.")
    with pytest.raises(TypeError) as error:
        tf.saved_model.save(object(), str(tmp_path))
    assert str(error.value) == "tf.saved_model.save here saves Keras models; got object."
