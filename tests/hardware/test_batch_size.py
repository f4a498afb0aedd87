"""The batch-size search, against simulated devices: exact, and never a size that failed."""

import numpy as np
import pytest

import hpctrain
from hpctrain.errors import ConfigError
from hpctrain.hardware.batch_size import cpu_batch_candidates, largest_fitting_batch, with_headroom
from hpctrain.keras.layers import Dense
from hpctrain.keras.models import Sequential


def simulated_gpu(largest_that_fits: int):
    """An 8 GB-like device that runs out of memory above ``largest_that_fits`` rows."""
    return lambda size: size <= largest_that_fits


@pytest.mark.parametrize("largest", [384, 32, 33, 1000, 4095])
def test_finds_the_exact_largest_fitting_size(largest):
    search = largest_fitting_batch(simulated_gpu(largest), start=32, limit=60_000)
    assert search.batch_size == largest
    assert all(fitted == (size <= largest) for size, fitted in search.trials)
    assert search.batch_size in [size for size, fitted in search.trials if fitted]


def test_doubles_then_bisects():
    search = largest_fitting_batch(simulated_gpu(384), start=32, limit=60_000)
    assert [size for size, _ in search.trials] == [32, 64, 128, 256, 512, 384, 448, 416, 400, 392, 388, 386, 385]
    assert search.describe().startswith("32 fits, 64 fits, 128 fits, 256 fits, 512 out of memory, 384 fits, 448 out")


def test_never_more_than_the_data_set():
    assert largest_fitting_batch(simulated_gpu(10_000), start=32, limit=1000).batch_size == 1000
    assert largest_fitting_batch(simulated_gpu(10_000), start=32, limit=20).batch_size == 20


def test_a_start_that_does_not_fit_is_an_error():
    with pytest.raises(ConfigError, match="even a batch of 32 rows does not fit"):
        largest_fitting_batch(simulated_gpu(16), start=32, limit=1000)


def test_headroom_and_candidates():
    assert with_headroom(384) == 344
    assert with_headroom(5) == 5
    assert cpu_batch_candidates(60_000) == [32, 64, 128, 256, 512, 1024]
    assert cpu_batch_candidates(100) == [32, 64]
    assert cpu_batch_candidates(10) == [10]


def test_fit_with_batch_size_auto_on_the_cpu_measures_and_explains(rng):
    x = rng.random((3000, 20)).astype("float32")
    y = rng.integers(0, 4, size=3000)
    model = Sequential([Dense(16, activation="relu", input_dim=20), Dense(4, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    before = model.get_weights()
    history = model.fit(x, y, epochs=2, batch_size="auto", verbose=0)
    explained = model.plan.explain()
    chosen = model.plan.batch_size
    assert chosen in cpu_batch_candidates(3000)
    assert f"batch_size: {chosen} (the smallest batch within 5% of the most samples per second on this model: 32 → " in explained
    assert "1024 → " in explained
    assert len(history.history["loss"]) == 2
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_batch_size_auto_refuses_a_dataloader():
    import torch

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(8, 2), torch.zeros(8)))
    trainer = hpctrain.Trainer(torch.nn.Linear(2, 1), loss=torch.nn.MSELoss(), optimizer="sgd")
    with pytest.raises(ConfigError, match="batch_size='auto' needs arrays"):
        trainer.fit(loader, batch_size="auto", verbose=0)
