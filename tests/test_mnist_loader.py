"""mnist.load_data: from a path, from Keras's cache, or downloaded only when allowed (checked by hash)."""

import hashlib
import os

import numpy as np
import pytest

from conftest import MNIST_DIR
from hpctrain.errors import InputError
from hpctrain.keras.datasets import mnist


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv(mnist.DOWNLOAD_ENV, raising=False)
    return tmp_path / "keras" / "datasets"


@pytest.fixture
def served_npz(tmp_path, monkeypatch):
    """A small mnist.npz behind a file:// URL standing in for Keras's download, with its own hash."""
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), "y_train": np.arange(5, dtype=np.uint8),
              "x_test": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), "y_test": np.arange(3, dtype=np.uint8)}
    source = tmp_path / "served.npz"
    np.savez(source, **arrays)
    monkeypatch.setattr(mnist, "MNIST_URL", source.as_uri())
    monkeypatch.setattr(mnist, "MNIST_SHA256", hashlib.sha256(source.read_bytes()).hexdigest())
    return arrays


def test_reads_idx_files_from_a_path_and_the_keras_cache(keras_home):
    (x_train, y_train), (x_test, y_test) = mnist.load_data(path=MNIST_DIR)
    assert x_train.shape == (10000, 28, 28) and x_train.dtype == np.uint8 and y_test.shape == (10000,)
    os.makedirs(keras_home)
    for name in os.listdir(MNIST_DIR):
        if name.endswith(".gz"):
            os.symlink(os.path.join(MNIST_DIR, name), keras_home / name)
    (cached_x, _), (_, cached_y) = mnist.load_data()
    np.testing.assert_array_equal(cached_x, x_train)
    np.testing.assert_array_equal(cached_y, y_test)


def test_without_permission_nothing_is_downloaded_and_the_error_says_where_files_go(keras_home, served_npz):
    with pytest.raises(InputError) as raised:
        mnist.load_data()
    message = str(raised.value)
    assert f"MNIST was not found at {keras_home / 'mnist.npz'}, {keras_home}" in message
    assert "train-images-idx3-ubyte[.gz]" in message and "load_data(download=True)" in message
    assert "HPCTRAIN_DOWNLOAD_DATASETS=1" in message
    assert not (keras_home / "mnist.npz").exists()


def test_an_allowed_download_is_checked_and_cached(keras_home, served_npz, monkeypatch):
    (x_train, y_train), (x_test, y_test) = mnist.load_data(download=True)
    np.testing.assert_array_equal(x_train, served_npz["x_train"])
    np.testing.assert_array_equal(y_test, served_npz["y_test"])
    assert (keras_home / "mnist.npz").exists()
    monkeypatch.setattr(mnist, "MNIST_URL", "file:///nonexistent/mnist.npz")  # cached now: no second download
    assert mnist.load_data()[0][0].shape == (5, 28, 28)
    assert mnist.load_data(path="mnist.npz")[1][1].tolist() == [0, 1, 2]  # Keras's name inside the cache


def test_the_environment_variable_allows_a_download(keras_home, served_npz, monkeypatch):
    monkeypatch.setenv(mnist.DOWNLOAD_ENV, "1")
    assert mnist.load_data()[0][1].tolist() == [0, 1, 2, 3, 4]


def test_a_download_with_the_wrong_hash_is_not_kept(keras_home, served_npz, monkeypatch):
    monkeypatch.setattr(mnist, "MNIST_SHA256", "0" * 64)
    with pytest.raises(InputError, match=r"has SHA-256 [0-9a-f]{64}, not Keras's 0{64}; it was not kept"):
        mnist.load_data(download=True)
    assert os.listdir(keras_home) == []


def test_offline_download_fails_with_where_to_put_the_files(keras_home, monkeypatch):
    monkeypatch.setattr(mnist, "MNIST_URL", "file:///nonexistent/mnist.npz")
    with pytest.raises(InputError, match=r"could not download MNIST from file:///nonexistent/mnist.npz .* may be "
                                         r"offline\. MNIST was not found at"):
        mnist.load_data(download=True)
    assert os.listdir(keras_home) == []
