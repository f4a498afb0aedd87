"""Bad arguments to the native API are named in an hpctrain error that says what was given,
what was expected and what to do; none surfaces as a raw error from deep inside."""

import re

import numpy as np
import pytest
import torch

import hpctrain
from hpctrain.errors import CheckpointError, ConfigError, InputError

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


def test_a_loss_given_as_an_unknown_name_is_refused_naming_the_valid_ones():
    with pytest.raises(ConfigError, match=re.escape("unknown loss 'mse_typo'; valid names: cross_entropy, mae, "
                                                    "mean_absolute_error, mean_squared_error, mse")):
        _trainer(loss="mse_typo")
    with pytest.raises(ConfigError, match=re.escape("loss must be a Loss, a function fn(prediction, target) or a "
                                                    "name such as 'mse'; got int")):
        _trainer(loss=5)


def test_a_loss_given_by_a_known_name_trains():
    x, y = _data()
    trainer = _trainer(loss="cross_entropy")
    history = trainer.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_an_empty_dataloader_is_named():
    empty = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(0, 4),
                                                                       torch.zeros(0, dtype=torch.long)))
    trainer = _trainer()
    for call in (lambda: trainer.fit(empty, epochs=1, verbose=0), lambda: trainer.evaluate(empty, verbose=0)):
        with pytest.raises(InputError, match=re.escape("the DataLoader gave no batches (its dataset has 0 "
                                                       "samples); give it at least one sample")):
            call()


def test_predict_with_the_wrong_input_width_is_named():
    trainer = _trainer()
    with pytest.raises(InputError, match=re.escape("the model could not run on x with (5,) features per sample")):
        trainer.predict(np.zeros((3, 5), dtype="float32"))


def test_load_weights_on_a_file_that_is_not_weights_is_named(tmp_path):
    import pickle

    trainer = _trainer()
    path = tmp_path / "not-weights.pkl"
    path.write_bytes(pickle.dumps({"anything": object.__name__, "f": print}))
    with pytest.raises(CheckpointError, match=re.escape(f"{path} is not a weights file that save_weights wrote")):
        trainer.load_weights(path)
    other = torch.nn.Linear(4, 3)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'other.pt'} holds the weights of another model: "
                                                   "missing 0.weight, 0.bias, 2.weight, 2.bias; unexpected weight, "
                                                   "bias")):
        trainer.load_weights(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no such file"):
        trainer.load_weights(tmp_path / "absent.pt")


@pytest.mark.parametrize("module, what", [(torch.nn.ReLU(), "no parameters"),
                                          (torch.nn.Linear(4, 3).requires_grad_(False),
                                           "2 parameter(s), all frozen (requires_grad=False)")])
def test_fit_on_a_module_with_no_parameters_to_train_is_refused(module, what):
    x = np.ones((8, 4), dtype="float32")
    trainer = hpctrain.Trainer(module, loss=torch.nn.MSELoss(), optimizer="sgd", plan=CPU)
    with pytest.raises(ConfigError, match=re.escape(f"the module {type(module).__name__} has no parameters to "
                                                    f"train ({what})")):
        trainer.fit(x, x[:, :3] if isinstance(module, torch.nn.Linear) else x, epochs=1, verbose=0)


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), "2", None])
def test_a_class_weight_that_is_not_a_finite_number_is_named(weight):
    x, y = _data()
    with pytest.raises(ConfigError, match=re.escape(f"class_weight for class 1 is {weight!r}; each class weight "
                                                    "must be a finite number")):
        _trainer().fit(x, y, epochs=1, verbose=0, class_weight={0: 1.0, 1: weight})


def test_model_checkpoint_pointed_at_an_existing_folder_is_refused_when_made(tmp_path):
    from hpctrain.engine.callbacks import ModelCheckpoint

    with pytest.raises(ConfigError, match=re.escape(f"ModelCheckpoint filepath {str(tmp_path)!r} is an existing "
                                                    "folder; give a file path, e.g. "
                                                    f"{str(tmp_path / 'weights-{epoch:02d}.pt')!r}")):
        ModelCheckpoint(tmp_path, save_weights_only=True)
    (tmp_path / "epoch-1").mkdir()
    x, y = _data()
    checkpoint = ModelCheckpoint(str(tmp_path / "epoch-{epoch}"), save_weights_only=True, monitor="loss")
    with pytest.raises(ConfigError, match=re.escape(f"ModelCheckpoint filepath {str(tmp_path / 'epoch-1')!r} is an "
                                                    "existing folder")):
        _trainer().fit(x, y, epochs=1, verbose=0, callbacks=[checkpoint])


def test_read_only_arrays_train_without_a_warning_and_are_left_unchanged():
    import warnings

    rng = np.random.default_rng(0)
    x = np.frombuffer(rng.normal(size=(64, 4)).astype("float32").tobytes(), dtype="float32").reshape(64, 4)
    y = np.frombuffer(rng.integers(0, 3, 64).astype("uint8").tobytes(), dtype="uint8")
    assert not x.flags.writeable and not y.flags.writeable
    kept = x.copy()
    torch.manual_seed(0)
    trainer = hpctrain.Trainer(torch.nn.Linear(4, 3), loss="cross_entropy", optimizer="adam")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        history = trainer.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert len(history.history["loss"]) == 2
    np.testing.assert_array_equal(x, kept)
