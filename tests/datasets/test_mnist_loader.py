"""hpctrain.datasets.mnist.load_data: MNIST read offline from IDX files or an .npz."""

import numpy as np
import pytest

from conftest import MNIST_DIR
from hpctrain.datasets import mnist
from hpctrain.errors import InputError


def test_reads_the_bundled_idx_files():
    (x_train, y_train), (x_test, y_test) = mnist.load_data(MNIST_DIR)
    assert x_train.shape == (10000, 28, 28) and x_train.dtype == np.uint8
    assert y_train.shape == (10000,) and y_test.shape == (10000,) and x_test.shape == (10000, 28, 28)
    assert sorted(np.unique(y_train).tolist()) == list(range(10))


def test_reads_an_npz_with_keras_array_names(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), "y_train": np.arange(5, dtype=np.uint8),
              "x_test": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), "y_test": np.arange(3, dtype=np.uint8)}
    np.savez(tmp_path / "mnist.npz", **arrays)
    (x_train, y_train), (x_test, y_test) = mnist.load_data(tmp_path / "mnist.npz")
    np.testing.assert_array_equal(x_train, arrays["x_train"])
    np.testing.assert_array_equal(y_test, arrays["y_test"])


def test_a_folder_without_the_files_names_them(tmp_path):
    with pytest.raises(InputError, match="has no train-images-idx3-ubyte or train-images-idx3-ubyte.gz"):
        mnist.load_data(tmp_path)
    with pytest.raises(InputError, match="neither a folder of MNIST IDX files nor an .npz file"):
        mnist.load_data(tmp_path / "missing.bin")
