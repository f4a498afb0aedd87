"""Bad arguments to the native API are named in an hpctrain error that says what was given,
what was expected and what to do; none surfaces as a raw error from deep inside."""

import re

import numpy as np
import pytest
import torch

import hpctrain
from hpctrain.errors import ConfigError, InputError

CPU = hpctrain.make_plan(device="cpu")


def _trainer(**kwargs):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    kwargs.setdefault("loss", torch.nn.CrossEntropyLoss())
    return hpctrain.Trainer(module, optimizer="sgd", plan=CPU, **kwargs)


def _data(rows=16):
    rng = np.random.default_rng(0)
    return rng.normal(size=(rows, 4)).astype("float32"), rng.integers(0, 3, size=rows)


@pytest.mark.parametrize("batch_size", [-1, 0, 2.5, True, "32"])
@pytest.mark.parametrize("call", ["evaluate", "predict"])
def test_inference_batch_size_that_is_not_a_positive_integer_is_named(call, batch_size):
    trainer = _trainer()
    x, y = _data()
    arguments = (x, y) if call == "evaluate" else (x,)
    with pytest.raises(ConfigError, match=re.escape(f"batch_size should be a positive integer; got {batch_size!r}")):
        getattr(trainer, call)(*arguments, batch_size=batch_size, verbose=0)


def test_inference_batch_size_none_and_a_numpy_integer_are_accepted():
    trainer = _trainer()
    x, y = _data()
    assert trainer.predict(x, batch_size=None).shape == (16, 3)
    assert trainer.predict(x, batch_size=np.int64(5)).shape == (16, 3)
    assert np.isfinite(trainer.evaluate(x, y, batch_size=np.int64(5), verbose=0))
