import os

import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_DIR = os.path.join(REPO, "data", "mnist")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session", autouse=True)
def _native_step_loop_built(tmp_path_factory):
    """The C++ step loop built once for the session (where a compiler is), so that every test
    trains as a user's later runs do and none starts a background build of its own."""
    os.environ["HPCTRAIN_NATIVE_DIR"] = str(tmp_path_factory.mktemp("hpctrain-native"))
    from hpctrain.engine import native

    native.build()


@pytest.fixture(autouse=True)
def _own_plan_cache(tmp_path_factory, monkeypatch):
    """Each test measures its own plans: none left by another test or an earlier run."""
    monkeypatch.setenv("HPCTRAIN_CACHE_DIR", str(tmp_path_factory.mktemp("hpctrain-cache")))


@pytest.fixture(autouse=True)
def _seeded():
    import hpctrain as tf

    tf.keras.utils.set_random_seed(1234)
    yield


def small_classification(rng, n=64, features=6, classes=3):
    x = rng.normal(size=(n, features)).astype("float32")
    y = rng.integers(0, classes, size=n)
    return x, y


def torch_float64(weights):
    return [torch.tensor(w, dtype=torch.float64, requires_grad=True) for w in weights]
