"""The static executor equals autograd: loss, gradients and updated weights, to 1e-6 in float32.

Models with Dropout are left out of the equality tests: on the autograd path Keras's Dropout
draws Keras's own masks, while the static executor draws its own, so the two runs drop
different units. The static executor's dropout is checked on its own below.
"""

import re

import numpy as np
import pytest
import torch

import hpctrain
import hpctrain as tf
from hpctrain.keras import optimizers, regularizers
from hpctrain.keras.layers import Activation, Dense, Dropout
from hpctrain.keras.models import Sequential

FEATURES, CLASSES = 6, 4


def _data(kind, rng, n=48):
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    labels = rng.integers(0, CLASSES, size=n)
    if kind == "sparse":
        return x, labels
    if kind == "one_hot":
        return x, tf.keras.utils.to_categorical(labels, CLASSES)
    if kind == "soft":
        soft = rng.random((n, CLASSES)).astype("float32")
        return x, soft / soft.sum(1, keepdims=True)
    if kind == "binary":
        return x, rng.integers(0, 2, size=(n, 1)).astype("float32")
    return x, rng.normal(size=(n, 2)).astype("float32")  # regression


LOSSES = {  # loss -> (label kind, output units, output activation)
    "sparse_categorical_crossentropy": ("sparse", CLASSES, "softmax"),
    "categorical_crossentropy": ("one_hot", CLASSES, "softmax"),
    "categorical_crossentropy_soft": ("soft", CLASSES, "softmax"),
    "binary_crossentropy": ("binary", 1, "sigmoid"),
    "mse": ("regression", 2, None),
    "mae": ("regression", 2, None),
}

BODIES = {
    "relu": lambda: [Dense(8, activation="relu", input_dim=FEATURES)],
    "tanh_tanh": lambda: [Dense(8, activation="tanh", input_dim=FEATURES), Dense(5, activation="tanh")],
    "sigmoid_no_bias": lambda: [Dense(8, activation="sigmoid", use_bias=False, input_dim=FEATURES)],
    "linear_then_activation_layer": lambda: [Dense(8, input_dim=FEATURES), Activation("relu")],
    "regularized": lambda: [Dense(8, activation="relu", input_dim=FEATURES,
                                  kernel_regularizer=regularizers.L1L2(l1=0.01, l2=0.02),
                                  bias_regularizer=regularizers.L2(0.1))],
}

OPTIMIZERS = {
    "sgd_lr1": lambda: optimizers.SGD(learning_rate=1.0),  # one step: weight change = -gradient
    "sgd_nesterov": lambda: optimizers.SGD(learning_rate=0.05, momentum=0.9, nesterov=True),
    "adam": lambda: optimizers.Adam(learning_rate=0.01),
    "adamw": lambda: optimizers.AdamW(learning_rate=0.01, weight_decay=0.05),
}


def _train(executor, body, loss, optimizer, rng_seed, epochs, batch_size):
    kind, units, activation = LOSSES[loss]
    metrics = {"regression": ("mae",), "one_hot": ("accuracy", "mse")}.get(kind, ("accuracy",))
    x, y = _data(kind, np.random.default_rng(rng_seed))
    tf.keras.utils.set_random_seed(11)
    model = Sequential([*BODIES[body](), Dense(units, activation=activation)])
    model.compile(optimizer=OPTIMIZERS[optimizer](), loss=loss.removesuffix("_soft"), metrics=list(metrics),
                  plan=hpctrain.make_plan(executor=executor))
    initial = model.get_weights()
    history = model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0)
    return model, initial, history


def _assert_same(static, autograd):
    (static_model, static_initial, static_history), (autograd_model, autograd_initial, autograd_history) = \
        static, autograd
    assert static_model.plan.executor == "static"
    assert autograd_model.plan.executor == "autograd"
    for a, b in zip(static_initial, autograd_initial):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(static_model.get_weights(), autograd_model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    for key in autograd_history.history:
        np.testing.assert_allclose(static_history.history[key], autograd_history.history[key], atol=1e-6, rtol=0)


@pytest.mark.parametrize("body", sorted(BODIES))
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_one_step_gradients_and_loss_match_autograd(body, loss):
    # One full batch with SGD(lr=1): the weight change is exactly minus the gradient.
    runs = [_train(executor, body, loss, "sgd_lr1", 0, epochs=1, batch_size=48) for executor in ("static", "autograd")]
    _assert_same(*runs)
    (model, initial, _), _ = runs
    assert any(not np.array_equal(a, b) for a, b in zip(model.get_weights(), initial))


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("body", ["tanh_tanh", "regularized"])
def test_shuffled_multi_step_training_matches_autograd(optimizer, body):
    # 48 samples in batches of 10: four full batches and a partial one per epoch, shuffled.
    loss = "sparse_categorical_crossentropy"
    runs = [_train(executor, body, loss, optimizer, 1, epochs=3, batch_size=10)
            for executor in ("static", "autograd")]
    _assert_same(*runs)


def test_native_sequential_of_torch_layers_runs_static_and_matches_autograd(rng):
    x = rng.normal(size=(40, 5)).astype("float32")
    y = rng.integers(0, 3, size=40)
    results = []
    for executor in ("static", "autograd"):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Dropout(0.2), torch.nn.Linear(7, 3))
        trainer = hpctrain.Trainer(net, loss=hpctrain.engine.losses.CrossEntropy(sparse=True, from_logits=True),
                                   optimizer="adam", metrics=["accuracy"], plan=hpctrain.make_plan(executor=executor))
        torch.manual_seed(5)
        history = trainer.fit(x, y, epochs=2, batch_size=16, verbose=0)
        assert trainer.plan.executor == executor
        results.append(([p.detach().clone() for p in net.parameters()], history.history))
    for a, b in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    for key in results[1][1]:
        np.testing.assert_allclose(results[0][1][key], results[1][1][key], atol=1e-6)


def test_models_outside_the_static_set_fall_back_to_autograd_and_say_why(rng):
    x, y = rng.normal(size=(20, 3)).astype("float32"), rng.integers(0, 2, size=20)
    model = Sequential([Dense(4, activation="gelu", input_dim=3), Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, verbose=0)
    assert model.plan.executor == "autograd"
    # The reason names the layer and what keeps it off the static executor.
    assert re.search(r"executor: autograd \(some layer has no backward the engine knows: layer 'dense\w*' \(Dense\): "
                     r"activation gelu\)", model.plan.explain())

    forced = Sequential([Dense(4, activation="gelu", input_dim=3), Dense(2, activation="softmax")])
    forced.compile(optimizer="adam", loss="sparse_categorical_crossentropy", plan=hpctrain.make_plan(executor="static"))
    with pytest.raises(hpctrain.errors.ConfigError, match="executor='static' cannot train this model: some layer has no backward"):
        forced.fit(x, y, verbose=0)


def test_a_convnet_is_told_its_convolution_keeps_it_off_the_static_executor(rng):
    """The layer's reason before the input's shape: images are not rows, but the convolution is why."""
    x, y = rng.random((16, 8, 8, 1)).astype("float32"), rng.integers(0, 2, size=16)
    model = Sequential([tf.keras.Input((8, 8, 1)), tf.keras.layers.Conv2D(2, 3, name="conv"),
                        tf.keras.layers.Flatten(), Dense(2)])
    model.compile(optimizer="adam", loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, verbose=0)
    assert dict(model.plan.reasons)["executor"] == (
        "autograd (some layer has no backward the engine knows: layer 'conv' (Conv2D): no static form)")


def test_run_eagerly_selects_autograd(rng):
    x, y = rng.normal(size=(20, 3)).astype("float32"), rng.integers(0, 2, size=20)
    model = Sequential([Dense(2, activation="softmax", input_dim=3)])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", run_eagerly=True)
    model.fit(x, y, verbose=0)
    assert model.plan.executor == "autograd"
    assert "executor: autograd (run_eagerly=True in compile)" in model.plan.explain()


def test_an_optimizer_without_a_torch_kernel_runs_keras_update_on_autograd(rng):
    # RMSprop has no PyTorch kernel equal to Keras's update: Keras's own optimizer.apply runs on
    # the gradients autograd leaves, and the weights are those Keras's own fit gives.
    x, y = rng.normal(size=(20, 3)).astype("float32"), rng.integers(0, 2, size=20)
    weights = []
    for engine in (True, False):
        tf.keras.utils.set_random_seed(2)
        model = Sequential([tf.keras.Input(shape=(3,)), Dense(4, activation="tanh"), Dense(2, activation="softmax")])
        model.compile(optimizer=optimizers.RMSprop(learning_rate=0.01, momentum=0.3),
                      loss="sparse_categorical_crossentropy")
        tf.keras.use_engine(engine)
        try:
            model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
        finally:
            tf.keras.use_engine(True)
        weights.append(model.get_weights())
        if engine:
            assert "executor: autograd (RMSprop runs Keras's own update)" in model.plan.explain()
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_static_executor_keeps_the_optimizer_state_torch_would(rng):
    x, y = rng.normal(size=(32, 3)).astype("float32"), rng.integers(0, 2, size=32)
    model = Sequential([Dense(2, activation="softmax", input_dim=3)])
    model.compile(optimizer=optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert model.plan.executor == "static"
    state = model._hpctrain_session.trainer.optimizer.torch().state_dict()["state"]
    assert [float(s["step"]) for s in state.values()] == [8.0, 8.0]
    assert model.optimizer.iterations == 8


def test_torch_optimizer_built_on_demand_shares_the_fused_state(rng):
    x, y = rng.normal(size=(32, 3)).astype("float32"), rng.integers(0, 2, size=32)
    model = Sequential([Dense(2, activation="softmax", input_dim=3)])
    model.compile(optimizer=optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    torch_optimizer = model._hpctrain_session.trainer.optimizer.torch()
    assert isinstance(torch_optimizer, torch.optim.Adam)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)  # the static path keeps updating the same state
    steps = [float(s["step"]) for s in torch_optimizer.state_dict()["state"].values()]
    assert steps == [8.0, 8.0]
    assert model.optimizer.iterations == 8
    model.optimizer.learning_rate = 0.5  # Keras's rate, read into the engine as the next epoch starts
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert torch_optimizer.param_groups[0]["lr"] == 0.5


def test_frozen_weights_stay_frozen(rng):
    x, y = rng.normal(size=(40, 5)).astype("float32"), rng.integers(0, 3, size=40)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    net[0].requires_grad_(False)
    frozen = net[0].weight.detach().clone()
    trainer = hpctrain.Trainer(net, loss=hpctrain.engine.losses.CrossEntropy(sparse=True, from_logits=True),
                               optimizer="adam")
    trainer.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert "executor: autograd (some weights are frozen)" in trainer.plan.explain()
    assert torch.equal(net[0].weight, frozen)


def test_keras_layers_take_their_bias_inside_the_gemm():
    # A Keras (in, out) kernel followed by its bias is one (in + 1, out) matrix: the layers after
    # the first multiply an input with a column of ones by it, forward and backward; the first
    # layer does where the batch comes with that column, else keeps a bias add and a GEMV.
    from hpctrain.engine.losses import CrossEntropy
    from hpctrain.engine.static_step import StaticStep

    model = Sequential([Dense(8, activation="relu", input_dim=FEATURES), Dense(5, activation="tanh"),
                        Dense(CLASSES, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(*_data("sparse", np.random.default_rng(0), n=4), verbose=0)  # builds the weights
    step = StaticStep(model._hpctrain_session.trainer.module, CrossEntropy(sparse=True, from_logits=True), model._hpctrain_session.trainer.optimizer,
                      batch_size=4)
    source = step.source(4)
    assert len(step.folded) == 2
    assert source.count("addmv(") == 1 and source.count("addmm(B") == 1
    assert source.count("mm(OB") == 2 and source.count("addmm(GWB") == 2  # forward; weight and bias gradient
    # Shuffled batches are gathered with a column of ones (the equality tests above train on them):
    # then the first layer folds its bias too.
    with_ones = step.source(4, ones_column=True)
    assert "addmv(" not in with_ones and "addmm(B" not in with_ones and "mm(x, KB0, out=O0)" in with_ones
    assert "addmm(GWB0_t, G0_t, x, beta=0, alpha=scale, out=GWB0_t)" in with_ones


def test_dense_layers_over_more_axes_train_with_autograd(rng):
    # Keras's Dense acts on the last axis of any input; the static step multiplies matrices only.
    x, y = rng.random((40, 5, 6)).astype("float32"), rng.random((40, 5, 3)).astype("float32")
    model = Sequential([tf.keras.Input(shape=(5, 6)), Dense(8, activation="relu"), Dense(3)])
    model.compile(optimizer=optimizers.Adam(0.01), loss="mse")
    before = model.evaluate(x, y, verbose=0)
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    assert dict(model.plan.reasons)["executor"] == (
        "autograd (the inputs are not a matrix of rows; Dense over more axes runs under autograd)")
    assert history.history["loss"][-1] < before
    assert model.predict(x, verbose=0).shape == (40, 5, 3)


def test_large_layers_multiplied_by_onednn_match_autograd_to_float32_rounding(monkeypatch):
    # Products of 2.5 M multiply-adds and more go to oneDNN where it beats MKL (2-2.5x on the AMD
    # reference CPU; on an Intel CPU MKL wins and takes them all, so oneDNN is chosen here as there);
    # its sums run in another order, so the comparison is to float32 rounding rather than 1e-6 absolute.
    from hpctrain.engine.static_step import StaticStep
    from hpctrain.hardware import gemm
    from hpctrain.hardware.gemm import onednn_linear

    monkeypatch.setattr(gemm, "large_product_linear", onednn_linear)

    rng = np.random.default_rng(3)
    x = rng.normal(size=(256, 300)).astype("float32")
    y = rng.integers(0, 10, size=256)
    runs = []
    for executor in ("static", "autograd"):
        tf.keras.utils.set_random_seed(5)
        model = Sequential([Dense(128, activation="relu", input_dim=300), Dense(10, activation="softmax")])
        # SGD: Adam divides by the root of tiny second moments, which magnifies rounding differences.
        model.compile(optimizer=optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                      plan=hpctrain.make_plan(executor=executor))
        history = model.fit(x, y, batch_size=128, epochs=3, verbose=0)
        runs.append((model, history))
    (static, static_history), (autograd, autograd_history) = runs
    if onednn_linear() is not None:
        trainer = static._hpctrain_session.trainer
        source = StaticStep(trainer.module, trainer.loss, trainer.optimizer, batch_size=128).source(128)
        assert source.count("onednn(") == 2  # the first layer's forward and weight gradient (128*300*128 MACs)
        assert dict(static.plan.reasons)["matmul"].startswith("oneDNN for 2 of the step's 5 products")
    for a, b in zip(static.get_weights(), autograd.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(static_history.history["loss"], autograd_history.history["loss"], rtol=1e-5)


@pytest.mark.parametrize("large_products", ["onednn", "chosen for this CPU"])
def test_weight_gradients_handed_from_onednn_to_adam_equal_autograds(monkeypatch, large_products):
    # With the fused Adam update, a large layer's weight gradient goes from oneDNN to the update as
    # oneDNN's own tensor (no copy into the flat buffer); .grad is brought up to date at the epoch's
    # end. Where MKL takes the product (an Intel CPU) it is written into the flat buffer, as every
    # small one. One full-batch step: the gradients must be autograd's, to float32 rounding.
    from hpctrain.engine.static_step import StaticStep
    from hpctrain.hardware import gemm

    if large_products == "onednn":
        monkeypatch.setattr(gemm, "large_product_linear", gemm.onednn_linear)
    onednn_linear = gemm.large_product_linear

    rng = np.random.default_rng(4)
    x = rng.normal(size=(256, 300)).astype("float32")
    y = rng.integers(0, 10, size=256)
    model = Sequential([Dense(128, activation="relu", input_dim=300), Dense(10, activation="softmax")])
    model.compile(optimizer=optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    w0, b0, w1, b1 = (torch.tensor(w, requires_grad=True) for w in model.get_weights())
    model.fit(x, y, batch_size=256, epochs=1, verbose=0)
    trainer = model._hpctrain_session.trainer
    assert model.plan.executor == "static"
    logits = torch.relu(torch.from_numpy(x) @ w0 + b0) @ w1 + b1
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
    expected = torch.autograd.grad(loss, [w0, b0, w1, b1])
    for variable, want in zip(model.trainable_variables, expected):
        torch.testing.assert_close(variable.value.grad, want, rtol=1e-4, atol=1e-7)
    # (A new step gives the parameters fresh gradient buffers: made after reading .grad.)
    handed = StaticStep(trainer.module, trainer.loss, trainer.optimizer, batch_size=256).handed
    assert handed == ({0: 0} if onednn_linear() is not None else {})


def test_a_static_run_is_bitwise_the_same_on_one_and_two_threads():
    # Threads are re-measured while training, so a run may change its thread count midway: the
    # static step's results must not depend on it (each kernel's split over threads leaves every
    # value's arithmetic unchanged).
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 6)).astype("float32"), rng.integers(0, 3, size=200)
    weights = []
    for threads in (1, 2):
        tf.keras.utils.set_random_seed(42)
        model = Sequential([Dense(8, activation="relu", input_dim=6), Dropout(0.2), Dense(3, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                      plan=hpctrain.make_plan(threads=threads))
        model.fit(x, y, epochs=3, batch_size=16, verbose=0)
        assert model.plan.executor == "static"
        weights.append(model.get_weights())
    for one, two in zip(*weights):
        np.testing.assert_array_equal(one, two)


def test_static_dropout_keeps_about_one_minus_rate_of_units_and_scales_them():
    from hpctrain.engine.static_step import Dropout as StaticDropout, _layer_callables

    rate, rows, units = 0.25, 4096, 64
    part = _layer_callables(StaticDropout(rate))
    tf.keras.utils.set_random_seed(9)
    output, mask = part(torch.ones(rows, units))
    kept = output != 0
    assert abs(kept.float().mean().item() - (1 - rate)) < 0.01  # 262,144 draws: std 0.0009
    torch.testing.assert_close(output[kept], torch.full_like(output[kept], 1 / (1 - rate)))
    grad = part.backward(torch.full((rows, units), 2.0), mask)
    torch.testing.assert_close(grad, 2.0 * output)

    # A Keras model with Dropout runs on the static executor, whose training loss is that of
    # ones (an identity layer passes the inputs on) with about (1 - rate) of them kept and scaled
    # by 1 / (1 - rate): ``units`` on average (the last Dense sums them; mae against zeros).
    model = Sequential([tf.keras.Input(shape=(units,)), Dense(units, use_bias=False, kernel_initializer="identity"),
                        Dropout(rate), Dense(1, use_bias=False, kernel_initializer="ones")])
    model.compile(optimizer=optimizers.SGD(learning_rate=0.0), loss="mae")
    history = model.fit(np.ones((rows, units), "float32"), np.zeros((rows, 1), "float32"), batch_size=512,
                        epochs=1, verbose=0)
    assert model.plan.executor == "static"
    assert history.history["loss"][0] == pytest.approx(units, rel=0.01)
    assert model.evaluate(np.ones((8, units), "float32"), np.zeros((8, 1), "float32"), verbose=0) == pytest.approx(
        units)  # no dropout outside training
