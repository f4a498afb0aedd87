"""The native API: any torch.nn.Module on the same engine, from arrays or a DataLoader."""

import dataclasses
import re

import numpy as np
import pytest
import torch

import hpctrain
from conftest import small_classification
from hpctrain.engine.data import ResidentData
from hpctrain.engine.losses import CrossEntropy


REPO_SRC = __import__("pathlib").Path(__file__).resolve().parents[2] / "src"

# Tests that compare with a reference computed on the CPU train on the CPU too.
CPU = hpctrain.make_plan(device="cpu")


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def test_trainer_on_a_module_matches_a_plain_pytorch_loop(rng):
    x, y = small_classification(rng, n=48)
    module = _net()
    reference = _net()
    trainer = hpctrain.Trainer(module, loss=torch.nn.CrossEntropyLoss(), plan=CPU,
                               optimizer=torch.optim.SGD(module.parameters(), lr=0.1), metrics=["accuracy"])
    history = trainer.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0)

    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    xt, yt = torch.tensor(x), torch.tensor(y)
    for _ in range(3):
        for start in range(0, 48, 16):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(reference(xt[start:start + 16]), yt[start:start + 16]).backward()
            opt.step()
    for got, expected in zip(module.parameters(), reference.parameters()):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert set(history.history) == {"loss", "accuracy"}


def test_dataloader_and_arrays_train_identically(rng):
    x, y = small_classification(rng, n=40)
    from_arrays, from_loader = _net(), _net()
    # The same executor on both sides, so the data path alone is compared, bit for bit.
    hpctrain.Trainer(from_arrays, loss=CrossEntropy(sparse=True, from_logits=True), optimizer="adam",
                     plan=hpctrain.make_plan(executor="autograd")).fit(x, y, epochs=2, batch_size=8, shuffle=False,
                                                                       verbose=0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.tensor(x), torch.tensor(y)),
                                         batch_size=8, shuffle=False)
    trainer = hpctrain.Trainer(from_loader, loss=CrossEntropy(sparse=True, from_logits=True), optimizer="adam")
    history = trainer.fit(loader, epochs=2, verbose=0, validation_data=loader)
    for a, b in zip(from_arrays.parameters(), from_loader.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert history.history["val_loss"][-1] == pytest.approx(trainer.evaluate(x, y, verbose=0), rel=1e-6)


def test_predict_applies_the_output_activation(rng):
    x, _ = small_classification(rng, n=10)
    module = _net()
    trainer = hpctrain.Trainer(module, loss=torch.nn.CrossEntropyLoss(), optimizer="sgd", plan=CPU,
                               output_activation=lambda z: torch.softmax(z, -1))
    probs = trainer.predict(x)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(probs, torch.softmax(module(torch.tensor(x)), -1).numpy(), rtol=1e-6)


def test_trainer_weights_round_trip(rng):
    trainer = hpctrain.Trainer(_net(), loss=torch.nn.CrossEntropyLoss(), optimizer="sgd")
    weights = trainer.get_weights()
    trainer.set_weights([w * 0 for w in weights])
    assert all(np.all(w == 0) for w in trainer.get_weights())
    with pytest.raises(hpctrain.errors.InputError, match="shaped"):
        trainer.set_weights([w.T for w in weights])


def test_epoch_batches_cover_every_sample_once_in_a_seeded_order():
    x = torch.arange(10, dtype=torch.float32).reshape(10, 1)
    data = ResidentData(x, torch.arange(10))
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    batches = list(data.batches(4, order=order))
    assert [len(b[0]) for b in batches] == [4, 4, 2]  # the last partial batch is kept
    seen = torch.cat([b[1] for b in batches])
    assert torch.equal(seen, order) and sorted(seen.tolist()) == list(range(10))
    assert torch.equal(torch.cat([b[0] for b in batches]).reshape(-1).long(), order)


def test_plan_explains_its_choices():
    plan = hpctrain.make_plan(threads=1, device="cpu")
    assert plan.threads == 1 and plan.device == torch.device("cpu")
    text = plan.explain()
    assert "threads: 1 (given explicitly)" in text and "device: cpu (given explicitly)" in text
    with pytest.raises(hpctrain.errors.ConfigError, match="threads must be 'auto' or a whole number >= 1"):
        hpctrain.make_plan(threads=0)


def test_plan_threads_are_applied_at_fit(rng):
    x, y = small_classification(rng, n=16)
    before = torch.get_num_threads()
    try:
        trainer = hpctrain.Trainer(_net(), loss=torch.nn.CrossEntropyLoss(), optimizer="sgd",
                                   plan=hpctrain.make_plan(device="cpu", threads=1))
        trainer.fit(x, y, verbose=0)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_physical_cores_are_counted_not_hyperthreads(tmp_path):
    from hpctrain.hardware.cpu import physical_core_count, usable_logical_cpus

    logical = sorted(usable_logical_cpus())
    # Two hyper-threads per core: the count halves.
    blocks = [f"processor\t: {cpu}\nphysical id\t: 0\ncore id\t\t: {i // 2}\n" for i, cpu in enumerate(logical)]
    path = tmp_path / "cpuinfo"
    path.write_text("\n".join(blocks))
    assert physical_core_count(str(path)) == max(1, -(-len(logical) // 2))


def test_thread_tuning_measures_candidates_and_leaves_no_trace(rng):
    x, y = small_classification(rng, n=256)

    def train(plan):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                                  torch.nn.Linear(16, 3))
        trainer = hpctrain.Trainer(net, loss=CrossEntropy(sparse=True, from_logits=True), optimizer="adam",
                                   metrics=["accuracy"], plan=plan)
        torch.manual_seed(1)
        history = trainer.fit(x, y, epochs=2, batch_size=16, verbose=0)
        return trainer, net, history

    tuned_plan = dataclasses.replace(hpctrain.make_plan(threads=2), tune_threads=True)
    tuned, tuned_net, tuned_history = train(tuned_plan)
    assert not tuned.plan.tune_threads and tuned.plan.threads in (1, 2)
    assert re.search(r"threads: \d \(measured on this model: 1 → \d+ us/step, 2 → \d+ us/step\)", tuned.plan.explain())
    _, fixed_net, fixed_history = train(hpctrain.make_plan(threads=tuned.plan.threads))
    # The measured steps were undone: weights, optimizer state, RNG (dropout, shuffle) all as if never run.
    for a, b in zip(tuned_net.parameters(), fixed_net.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert tuned_history.history["loss"] == pytest.approx(fixed_history.history["loss"], abs=1e-6)


def test_thread_candidates():
    from hpctrain.engine.tuning import thread_candidates

    assert thread_candidates(1) == [1]
    assert thread_candidates(2) == [1, 2]
    assert thread_candidates(12) == [1, 2, 4, 8, 12]


@pytest.mark.parametrize("loss, labels", [
    (torch.nn.CrossEntropyLoss(), "indices"), (torch.nn.functional.cross_entropy, "probabilities"),
    (torch.nn.MSELoss(), "regression"), (torch.nn.L1Loss(), "regression"), (torch.nn.BCEWithLogitsLoss(), "binary"),
])
def test_plain_pytorch_losses_train_on_the_static_executor_exactly_as_with_autograd(loss, labels, rng):
    x = rng.normal(size=(48, 6)).astype("float32")
    outputs = {"indices": 3, "probabilities": 3, "regression": 2, "binary": 1}[labels]
    y = {"indices": rng.integers(0, 3, size=48),
         "probabilities": rng.dirichlet(np.ones(3), size=48).astype("float32"),
         "regression": rng.normal(size=(48, 2)).astype("float32"),
         "binary": rng.integers(0, 2, size=(48, 1)).astype("float32")}[labels]
    runs = []
    for executor in ("auto", "autograd"):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, outputs))
        trainer = hpctrain.Trainer(net, loss=loss, optimizer="adam", plan=hpctrain.make_plan(executor=executor))
        history = trainer.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
        runs.append((trainer.plan.executor, [p.detach().clone() for p in net.parameters()], history.history["loss"]))
    assert [run[0] for run in runs] == ["static", "autograd"]
    for a, b in zip(runs[0][1], runs[1][1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    np.testing.assert_allclose(runs[0][2], runs[1][2], atol=1e-6)


def test_customised_pytorch_losses_keep_their_own_semantics(rng):
    from hpctrain.engine.losses import CallableLoss, from_torch

    assert from_torch(torch.nn.CrossEntropyLoss(label_smoothing=0.1)) is None
    assert from_torch(torch.nn.CrossEntropyLoss(weight=torch.ones(3))) is None
    assert from_torch(torch.nn.MSELoss(reduction="sum")) is None
    assert from_torch(torch.nn.CrossEntropyLoss(ignore_index=0)) is None
    trainer = hpctrain.Trainer(_net(), loss=torch.nn.CrossEntropyLoss(label_smoothing=0.1), optimizer="sgd")
    assert isinstance(trainer.loss, CallableLoss)


def test_shuffled_batches_stay_intact_while_the_loop_uses_them():
    # Rows are gathered several batches at a time into two alternating chunks: a batch must hold
    # its rows until the step after it, and targets (kept by deferred metrics) for the whole pass.
    from hpctrain.engine.data import batches_per_gather

    rows = 4_000
    x = torch.arange(rows * 8, dtype=torch.float32).reshape(rows, 8)
    data = ResidentData(x, torch.arange(rows))
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(1))
    assert batches_per_gather(x, 4) * 4 < rows // 4  # several gathers, so chunks are reused
    previous, targets = None, []
    for first, (xb, yb) in zip(range(0, rows, 4), data.batches(4, order=order)):
        assert torch.equal(xb, x[order[first:first + 4]])
        if previous is not None:
            assert torch.equal(previous[0], x[previous[1]])
        previous = (xb, order[first:first + 4])
        targets.append(yb)
    assert torch.equal(torch.cat(targets), order)


def test_an_ignored_class_trains_as_torch_ignores_it(rng):
    x, y = small_classification(rng, n=48)
    module, reference = _net(), _net()
    loss = torch.nn.CrossEntropyLoss(ignore_index=0)
    hpctrain.Trainer(module, loss=loss, optimizer=torch.optim.SGD(module.parameters(), lr=0.1), plan=CPU).fit(
        x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    xt, yt = torch.tensor(x), torch.tensor(y)
    for _ in range(2):
        for start in range(0, 48, 16):
            opt.zero_grad()
            loss(reference(xt[start:start + 16]), yt[start:start + 16]).backward()
            opt.step()
    for got, expected in zip(module.parameters(), reference.parameters()):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def _batch_norm_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def test_weights_include_buffers_so_restoring_the_best_epoch_restores_batch_norm(rng):
    x, y = small_classification(rng, n=64)
    module = _batch_norm_net()
    trainer = hpctrain.Trainer(module, loss=torch.nn.CrossEntropyLoss(), optimizer="adam", plan=CPU)
    weights = trainer.get_weights()
    assert len(weights) == len(module.state_dict())  # running mean, variance and count included
    best = hpctrain.keras.callbacks.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
    history = trainer.fit(x[:48], y[:48], epochs=6, batch_size=8, verbose=0, validation_data=(x[48:], y[48:]),
                          callbacks=[best])
    assert trainer.evaluate(x[48:], y[48:], verbose=0) == pytest.approx(min(history.history["val_loss"]), rel=1e-6)


def test_a_keras_callback_is_a_callback_to_the_trainer_in_a_fresh_process(tmp_path):
    """Before any Keras model has trained in the process, a Keras callback is taken by the native API."""
    import subprocess
    import sys

    program = (
        "import numpy as np, torch, hpctrain\n"
        "from hpctrain.keras.callbacks import EarlyStopping, LambdaCallback\n"
        "torch.manual_seed(0)\n"
        "x = np.random.default_rng(0).normal(size=(32, 6)).astype('float32'); y = np.arange(32) % 3\n"
        "t = hpctrain.Trainer(torch.nn.Linear(6, 3), loss=torch.nn.CrossEntropyLoss(), optimizer='sgd')\n"
        "seen = []\n"
        "h = t.fit(x, y, epochs=3, verbose=0, callbacks=[EarlyStopping(monitor='loss', patience=5),\n"
        "          LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(epoch))])\n"
        "print('epochs', seen, len(h.history['loss']))\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO_SRC)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "epochs [0, 1, 2] 3" in done.stdout


def test_model_checkpoint_saves_a_modules_state_dict(tmp_path, rng):
    x, y = small_classification(rng, n=32)
    module = _net()
    trainer = hpctrain.Trainer(module, loss=torch.nn.CrossEntropyLoss(), optimizer="sgd", plan=CPU)
    path = tmp_path / "weights-{epoch}.pt"
    trainer.fit(x, y, epochs=2, verbose=0, callbacks=[
        hpctrain.engine.callbacks.ModelCheckpoint(str(path), monitor="loss", save_weights_only=True)])
    saved = torch.load(tmp_path / "weights-2.pt", weights_only=True)
    for name, tensor in module.state_dict().items():
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=0)
    other = hpctrain.Trainer(_net(), loss=torch.nn.CrossEntropyLoss(), optimizer="sgd", plan=CPU)
    other.load_weights(tmp_path / "weights-2.pt")
    np.testing.assert_array_equal(other.predict(x), trainer.predict(x))
    with pytest.raises(hpctrain.errors.ConfigError, match=r"for a torch module give save_weights_only=True"):
        trainer.fit(x, y, epochs=1, verbose=0,
                    callbacks=[hpctrain.engine.callbacks.ModelCheckpoint(str(tmp_path / "m.keras"))])


def test_loader_batches_get_the_same_label_handling_as_arrays(rng):
    """(N,) float64 regression targets against a one-unit output: from a DataLoader exactly as
    from arrays (float32, aligned to (N, 1); no (N, N) broadcast)."""
    x = rng.normal(size=(64, 6))
    y = x.sum(1)
    torch.manual_seed(0)
    from_arrays = torch.nn.Linear(6, 1)
    from_loader = torch.nn.Linear(6, 1)
    from_loader.load_state_dict(from_arrays.state_dict())
    hpctrain.Trainer(from_arrays, loss=torch.nn.MSELoss(), optimizer="sgd", plan=CPU).fit(
        x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.tensor(x), torch.tensor(y)),
                                         batch_size=16)
    hpctrain.Trainer(from_loader, loss=torch.nn.MSELoss(), optimizer="sgd", plan=CPU).fit(loader, epochs=2,
                                                                                        verbose=0)
    for a, b in zip(from_arrays.parameters(), from_loader.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


class _DictOutput(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(6, 3)

    def forward(self, x):
        return {"logits": self.linear(x)}


def test_a_module_returning_a_dict_is_told_to_return_a_tensor(rng):
    x, y = small_classification(rng, n=16)
    trainer = hpctrain.Trainer(_DictOutput(), loss=lambda out, target: out["logits"].sum(), optimizer="sgd")
    with pytest.raises(hpctrain.errors.InputError, match=r"the model returned a dict, not a tensor"):
        trainer.fit(x, y, verbose=0)


def test_evaluate_takes_a_dataloader_as_fit_does(rng):
    x, y = small_classification(rng, n=40)
    trainer = hpctrain.Trainer(_net(), loss=torch.nn.CrossEntropyLoss(), optimizer="sgd", metrics=["accuracy"],
                               plan=CPU)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.tensor(x), torch.tensor(y)),
                                         batch_size=16)
    assert trainer.evaluate(loader, verbose=0) == pytest.approx(trainer.evaluate(x, y, verbose=0), rel=1e-6)
    with pytest.raises(hpctrain.errors.ConfigError, match=r"takes the labels .* from its batches"):
        trainer.evaluate(loader, y, verbose=0)
    with pytest.raises(hpctrain.errors.ConfigError, match=r"predict takes the inputs as one array or tensor"):
        trainer.predict(loader)


def test_integer_targets_shaped_like_the_output_reach_a_torch_loss_as_floats(rng):
    x = rng.normal(size=(32, 6)).astype("float32")
    y = rng.integers(0, 5, size=(32, 3))  # integer regression targets, one per output
    torch.manual_seed(0)
    module = torch.nn.Linear(6, 3)
    reference = torch.nn.Linear(6, 3)
    reference.load_state_dict(module.state_dict())
    hpctrain.Trainer(module, loss=torch.nn.HuberLoss(), optimizer=torch.optim.SGD(module.parameters(), lr=0.1),
                     plan=CPU).fit(x, y, epochs=1, batch_size=32, verbose=0)
    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    torch.nn.HuberLoss()(reference(torch.tensor(x)), torch.tensor(y, dtype=torch.float32)).backward()
    opt.step()
    for got, expected in zip(module.parameters(), reference.parameters()):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_a_list_of_input_arrays_is_named_as_several_inputs(rng):
    x, y = small_classification(rng, n=20)
    trainer = hpctrain.Trainer(_net(), loss=torch.nn.CrossEntropyLoss(), optimizer="sgd")
    with pytest.raises(hpctrain.errors.InputError, match=r"x is a list of 2 arrays of 20 rows each: several inputs"):
        trainer.fit([x, x], y, verbose=0)
