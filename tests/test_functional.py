"""Functional and subclassed models, Concatenate/Add, models as layers, NumPy results, saving.

Every number is checked against the same computation written in plain PyTorch.
"""

import numpy as np
import pytest
import torch

import hpctrain as tf
from conftest import MNIST_DIR
from hpctrain.errors import ConfigError, InputError
from hpctrain.keras import losses
from hpctrain.keras.callbacks import EarlyStopping, ModelCheckpoint
from hpctrain.keras.layers import Add, Concatenate, Dense, Dropout, Input
from hpctrain.keras.models import Model, Sequential, load_model
from hpctrain.keras.optimizers import SGD, Adam


def _two_input_two_output_model():
    """Inputs a (4) and b (3); a shared Dense used twice; Concatenate and Add; outputs cls and reg."""
    a, b = Input(shape=(4,), name="a"), Input(shape=(3,), name="b")
    shared = Dense(5, activation="tanh", name="shared")
    from_a, from_b = shared(a), shared(Dense(4, name="project_b")(b))
    joined = Concatenate(name="joined")([from_a, from_b])
    summed = Add(name="summed")([from_a, from_b])
    cls = Dense(3, activation="softmax", name="cls")(joined)
    reg = Dense(1, name="reg")(summed)
    return Model(inputs={"a": a, "b": b}, outputs=[cls, reg], name="two_by_two"), shared


def _reference_forward(weights, a, b):
    """The model above in plain torch; ``weights`` are tensors in the model's get_weights order."""
    shared_k, shared_b, proj_k, proj_b, cls_k, cls_b, reg_k, reg_b = weights
    from_a = torch.tanh(a @ shared_k + shared_b)
    from_b = torch.tanh((b @ proj_k + proj_b) @ shared_k + shared_b)
    cls = torch.softmax(torch.cat([from_a, from_b], dim=-1) @ cls_k + cls_b, dim=-1)
    reg = (from_a + from_b) @ reg_k + reg_b
    return cls, reg


def _data(rng, n=48):
    a = rng.normal(size=(n, 4)).astype("float32")
    b = rng.normal(size=(n, 3)).astype("float32")
    labels = rng.integers(0, 3, size=n)
    target = rng.normal(size=(n, 1)).astype("float32")
    return a, b, labels, target


def test_functional_graph_outputs_and_gradients_equal_torch(rng):
    model, _ = _two_input_two_output_model()
    assert [layer.name for layer in model.layers] == ["a", "b", "shared", "project_b", "joined", "summed", "cls", "reg"]
    a, b, _, _ = _data(rng, n=6)
    cls, reg = model({"a": torch.tensor(a), "b": torch.tensor(b)})
    (cls.square().sum() + reg.sum()).backward()
    grads = [p.grad.numpy() for layer in model.layers for p in layer.weights]

    reference = [torch.tensor(w, requires_grad=True) for w in model.get_weights()]
    ref_cls, ref_reg = _reference_forward(reference, torch.tensor(a), torch.tensor(b))
    (ref_cls.square().sum() + ref_reg.sum()).backward()
    np.testing.assert_allclose(cls.detach().numpy(), ref_cls.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(reg.detach().numpy(), ref_reg.detach().numpy(), atol=1e-5)
    assert len(grads) == len(reference) == 8
    for got, ref in zip(grads, reference):
        np.testing.assert_allclose(got, ref.grad.numpy(), atol=1e-5)


def test_a_layer_called_twice_shares_one_set_of_weights(rng):
    model, shared = _two_input_two_output_model()
    assert sum(layer is shared for layer in model.layers) == 1
    assert model.count_params() == (4 * 5 + 5) + (3 * 4 + 4) + (10 * 3 + 3) + (5 + 1)
    assert len(list(model.parameters())) == 8
    a, b, _, _ = _data(rng, n=4)
    before = model.predict({"a": a, "b": b}, verbose=0)
    shared.set_weights([np.zeros((4, 5), "float32"), np.zeros(5, "float32")])  # both calls now give tanh(0) = 0
    _, reg = model.predict({"a": a, "b": b}, verbose=0)
    np.testing.assert_array_equal(reg, np.zeros_like(reg))  # the reg head's bias starts at zero
    assert not np.allclose(before[1], reg)


def test_multi_input_multi_output_fit_equals_torch_sgd(rng):
    model, _ = _two_input_two_output_model()
    model.compile(optimizer=SGD(learning_rate=0.1), loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"},
                  loss_weights={"cls": 1.0, "reg": 0.5}, metrics={"cls": ["accuracy"]})
    a, b, labels, target = _data(rng, n=48)
    reference = [torch.tensor(w, requires_grad=True) for w in model.get_weights()]
    history = model.fit([a, b], {"cls": labels, "reg": target}, batch_size=16, epochs=2, shuffle=False, verbose=0)

    optimizer = torch.optim.SGD(reference, lr=0.1)
    epoch_losses = []
    for _ in range(2):
        totals = np.zeros(3)
        for start in range(0, 48, 16):
            rows = slice(start, start + 16)
            cls, reg = _reference_forward(reference, torch.tensor(a[rows]), torch.tensor(b[rows]))
            cls_loss = torch.nn.functional.nll_loss(cls.clamp(1e-7, 1 - 1e-7).log(), torch.tensor(labels[rows]))
            reg_loss = torch.nn.functional.mse_loss(reg, torch.tensor(target[rows]))
            loss = cls_loss + 0.5 * reg_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            totals += [loss.item(), cls_loss.item(), reg_loss.item()]
        epoch_losses.append(totals / 3)

    assert model.plan.executor == "autograd"  # a graph, not a plain stack: autograd trains it
    for got, ref in zip(model.get_weights(), reference):
        np.testing.assert_allclose(got, ref.detach().numpy(), atol=1e-5)
    assert list(history.history) == ["loss", "cls_loss", "reg_loss", "cls_accuracy"]
    for key, column in (("loss", 0), ("cls_loss", 1), ("reg_loss", 2)):
        np.testing.assert_allclose(history.history[key], [e[column] for e in epoch_losses], rtol=1e-5)
    predicted_cls, _ = model.predict([a, b], verbose=0)
    accuracy = np.mean(np.argmax(predicted_cls, axis=-1) == labels)
    loss, cls_loss, reg_loss, cls_accuracy = model.evaluate({"a": a, "b": b}, [labels, target], verbose=0)
    assert cls_accuracy == pytest.approx(accuracy)
    assert loss == pytest.approx(cls_loss + 0.5 * reg_loss, rel=1e-5)


def test_one_loss_for_every_output_and_validation_keys(rng):
    model, _ = _two_input_two_output_model()
    model.compile(optimizer="adam", loss=["sparse_categorical_crossentropy", "mse"])
    a, b, labels, target = _data(rng)
    history = model.fit({"a": a, "b": b}, [labels, target], epochs=1, verbose=0,
                        validation_data=([a, b], [labels, target]))
    assert sorted(history.history) == sorted(["loss", "cls_loss", "reg_loss", "val_loss", "val_cls_loss",
                                              "val_reg_loss"])
    assert history.history["val_loss"][0] == pytest.approx(
        history.history["val_cls_loss"][0] + history.history["val_reg_loss"][0], rel=1e-5)
    # validation_split holds out the last rows of every input and output alike
    split = model.fit([a, b], [labels, target], epochs=1, validation_split=0.25, verbose=0).history
    held_out = model.evaluate([a[36:], b[36:]], [labels[36:], target[36:]], verbose=0, return_dict=True)
    for key in ("loss", "cls_loss", "reg_loss"):
        assert split[f"val_{key}"][0] == pytest.approx(held_out[key], rel=1e-5)


class ResidualNet(Model):
    def __init__(self):
        super().__init__()
        self.hidden = Dense(6, activation="relu")
        self.dropout = Dropout(0.5)
        self.out = Dense(3)

    def call(self, inputs, training=False):
        return self.out(self.dropout(self.hidden(inputs), training=training))


def test_subclassed_model_builds_on_first_call_and_trains_as_torch(rng):
    x, y = rng.normal(size=(40, 4)).astype("float32"), rng.integers(0, 3, size=40)
    model = ResidualNet()
    assert model.name == "residual_net" and not model.built and model.get_weights() == []
    first = model(x[:1])
    assert first.shape == (1, 3) and model.built
    assert [w.shape for w in model.get_weights()] == [(4, 6), (6,), (6, 3), (3,)]
    model.compile(optimizer=SGD(learning_rate=0.05),
                  loss=losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.dropout.rate = 0.0  # dropout masks cannot be matched by the reference; the training flag is checked below
    reference = [torch.tensor(w, requires_grad=True) for w in model.get_weights()]
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)

    optimizer = torch.optim.SGD(reference, lr=0.05)
    for _ in range(2):
        for start in range(0, 40, 8):
            hidden_k, hidden_b, out_k, out_b = reference
            logits = torch.relu(torch.tensor(x[start:start + 8]) @ hidden_k + hidden_b) @ out_k + out_b
            loss = torch.nn.functional.cross_entropy(logits, torch.tensor(y[start:start + 8]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for got, ref in zip(model.get_weights(), reference):
        np.testing.assert_allclose(got, ref.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(model.predict(x, verbose=0), model(x).numpy(), atol=1e-6)


def test_subclassed_model_passes_the_training_flag_and_saves_weights(rng, tmp_path):
    x = rng.normal(size=(200, 4)).astype("float32")
    model = ResidualNet()
    inference = model(x).numpy()
    np.testing.assert_array_equal(model(x).numpy(), inference)  # no dropout at inference
    assert not np.allclose(model(x, training=True).numpy(), inference)  # dropout in training mode
    model.save_weights(tmp_path / "r.weights.safetensors")
    other = ResidualNet()
    other(x[:1])
    other.load_weights(tmp_path / "r.weights.safetensors")
    np.testing.assert_array_equal(other(x).numpy(), inference)
    with pytest.raises(ConfigError, match="subclassed model"):
        model.save(str(tmp_path / "r.keras"))


def test_model_as_a_layer_of_sequential(rng):
    x, y = rng.normal(size=(32, 4)).astype("float32"), rng.normal(size=(32, 1)).astype("float32")
    inputs = Input(shape=(4,))
    base = Model(inputs, Dense(5, activation="relu")(inputs))
    model = Sequential([base, Dense(1)])
    assert model.layers[0] is base and model.count_params() == 25 + 6
    kernel, bias, head_k, head_b = model.get_weights()
    np.testing.assert_allclose(model(x).numpy(), np.maximum(x @ kernel + bias, 0) @ head_k + head_b, atol=1e-5)

    # A Sequential inside a Sequential trains on the static executor, exactly like the flat stack.
    inner = Sequential([Dense(6, activation="relu", input_shape=(4,)), Dense(3, activation="tanh")])
    nested = Sequential([inner, Dense(1)])
    flat = Sequential([Dense(6, activation="relu", input_shape=(4,)), Dense(3, activation="tanh"), Dense(1)])
    flat.set_weights(nested.get_weights())
    for candidate in (nested, flat):
        candidate.compile(optimizer=SGD(learning_rate=0.05), loss="mse")
        candidate.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    assert nested.plan.executor == "static"
    for got, ref in zip(nested.get_weights(), flat.get_weights()):
        np.testing.assert_allclose(got, ref, atol=1e-6)


def test_numpy_calls_return_arrays_with_numpy(rng):
    x, y = rng.normal(size=(5, 4)).astype("float32"), np.array([0, 2, 1, 1, 0])
    inputs = Input(shape=(4,))
    model = Model(inputs=inputs, outputs=Dense(3)(inputs))
    kernel, bias = model.get_weights()
    logits = model(x[:1]).numpy()
    assert type(logits) is np.ndarray
    np.testing.assert_allclose(logits, x[:1] @ kernel + bias, atol=1e-6)
    np.testing.assert_array_equal(np.argmax(model(x), axis=-1), np.argmax(x @ kernel + bias, axis=-1))
    loss_fn = losses.SparseCategoricalCrossentropy(from_logits=True)
    expected = torch.nn.functional.cross_entropy(torch.tensor(x @ kernel + bias), torch.tensor(y)).item()
    assert loss_fn(y, model(x)).numpy() == pytest.approx(expected, rel=1e-6)
    dense = Dense(2)
    out = dense(x)
    assert out.shape == (5, 2) and dense.built
    np.testing.assert_allclose(out.numpy(), x @ dense.get_weights()[0], atol=1e-6)
    np.testing.assert_allclose(Add()([x, x]).numpy(), 2 * x)
    np.testing.assert_allclose(Concatenate(axis=0)([x, x[:2]]).numpy(), np.concatenate([x, x[:2]]))
    differentiable = model(torch.tensor(x))  # on tensors: a differentiable forward
    assert differentiable.requires_grad


def test_functional_save_and_load_round_trip(rng, tmp_path):
    model, _ = _two_input_two_output_model()
    nested_inputs = Input(shape=(4,), name="solo")
    wrapped = Model(nested_inputs, Sequential([Dense(2, name="inner_dense")], name="inner")(nested_inputs),
                    name="wrapped")
    a, b, _, _ = _data(rng, n=10)
    for original, x in ((model, {"a": a, "b": b}), (wrapped, a)):
        original.save(tmp_path / f"{original.name}.keras")
        loaded = load_model(tmp_path / f"{original.name}.keras")
        assert type(loaded).__name__ == "Functional" and loaded.name == original.name
        assert loaded.get_config() == original.get_config()
        for got, expected in zip(loaded.get_weights(), original.get_weights()):
            np.testing.assert_array_equal(got, expected)
        got, expected = loaded.predict(x, verbose=0), original.predict(x, verbose=0)
        for got_part, expected_part in zip(got if isinstance(got, list) else [got],
                                           expected if isinstance(expected, list) else [expected]):
            np.testing.assert_array_equal(got_part, expected_part)


def test_get_layer_output_makes_a_feature_extractor(rng):
    model, shared = _two_input_two_output_model()
    assert model.get_layer("shared") is shared and model.get_layer(index=-1).name == "reg"
    extractor = Model(inputs=model.inputs, outputs=model.get_layer("joined").output)
    a, b, _, _ = _data(rng, n=3)
    weights = [torch.tensor(w) for w in model.get_weights()]
    shared_k, shared_b, proj_k, proj_b = weights[:4]
    expected = torch.cat([torch.tanh(torch.tensor(a) @ shared_k + shared_b),
                          torch.tanh((torch.tensor(b) @ proj_k + proj_b) @ shared_k + shared_b)], dim=-1)
    np.testing.assert_allclose(extractor.predict([a, b], verbose=0), expected.numpy(), atol=1e-6)
    with pytest.raises(InputError, match="two_by_two has no layer named 'nope'; its layers are a, b, shared"):
        model.get_layer("nope")
    with pytest.raises(ConfigError, match="layer dense_free has no output yet"):
        Dense(2, name="dense_free").output


def test_dict_outputs_predict_as_a_dict(rng):
    inputs = Input(shape=(4,))
    hidden = Dense(3)(inputs)
    model = Model(inputs, {"first": Dense(2)(hidden), "second": Dense(1)(hidden)})
    result = model.predict(rng.normal(size=(3, 4)).astype("float32"), verbose=0)
    assert list(result) == ["first", "second"] and result["first"].shape == (3, 2)


def test_summary_lists_input_layers_and_shared_layers_once(capsys):
    model, _ = _two_input_two_output_model()
    model.summary()
    text = capsys.readouterr().out
    assert 'Model: "two_by_two"' in text
    assert "│ a (InputLayer)                  │ (None, 4)              │             0 │" in text
    assert text.count("shared (Dense)") == 1
    assert "│ joined (Concatenate)            │ (None, 10)             │             0 │" in text
    assert " Total params: 80 (320.00 B)" in text


def test_functional_errors_say_what_to_do(rng):
    a, b = Input(shape=(4,), name="a"), Input(shape=(3,), name="b")
    with pytest.raises(ConfigError, match=r"depend on b, which is not among the model's inputs \(a\)"):
        Model(a, Add()([Dense(3)(a), Dense(3)(b)]))
    with pytest.raises(ConfigError, match=r"Concatenate\(axis=-1\) needs inputs whose shapes agree"):
        Concatenate()([Input(shape=(4, 2)), Input(shape=(3, 2))])
    with pytest.raises(ConfigError, match="Add needs inputs of one shape"):
        Add()([a, b])
    with pytest.raises(ConfigError, match="layer names must be unique within a model; repeated: d"):
        Model(a, Dense(2, name="d")(Dense(3, name="d")(a)))
    model, _ = _two_input_two_output_model()
    with pytest.raises(ConfigError, match=r"compile loss is a list of 1; the model has 2 outputs \(cls, reg\)"):
        model.compile(optimizer="sgd", loss=["mse"])
    model.compile(optimizer="sgd", loss="mse")
    x = rng.normal(size=(8, 4)).astype("float32")
    with pytest.raises(InputError, match=r"the model has 2 inputs \(a, b\) but x has 1 array"):
        model.fit(x, [x[:, :3], x[:, :1]], verbose=0)
    with pytest.raises(InputError, match=r"x is a dict with keys \['a', 'c'\]; the model's inputs are \['a', 'b'\]"):
        model.fit({"a": x, "c": x}, [x, x], verbose=0)
    with pytest.raises(InputError, match=r"input b expects samples shaped \(3,\) but got \(4,\)"):
        model.fit([x, x], [x[:, :3], x[:, :1]], verbose=0)
    with tf.distribute.MirroredStrategy(devices=["cpu:0", "cpu:1"]).scope():
        model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ConfigError, match="several inputs or outputs cannot train in spawned replicas yet"):
        model.fit([x, x[:, :3]], [x[:, :3], x[:, :1]], verbose=0)


def test_functional_program_on_real_mnist_resumes_from_its_checkpoint(tmp_path):
    """The Keras program: a functional MLP, a custom loss, EarlyStopping and ModelCheckpoint, then
    load_model from the checkpoint and carry on training."""
    (x_train, y_train), (x_test, y_test) = tf.keras.datasets.mnist.load_data(path=MNIST_DIR)
    x_train = (x_train.reshape(-1, 784) / 255.0).astype("float32")
    x_test = (x_test.reshape(-1, 784) / 255.0).astype("float32")

    def focal_crossentropy(y_true, y_pred):  # a plain fn(y_true, y_pred) returning per-sample losses
        crossentropy = losses.sparse_categorical_crossentropy(y_true, y_pred)
        return (1.0 - torch.exp(-crossentropy)) * crossentropy

    inputs = Input(shape=(784,))
    hidden = Dropout(0.2)(Dense(128, activation="relu")(inputs))
    model = Model(inputs=inputs, outputs=Dense(10, activation="softmax")(hidden), name="mnist_mlp")
    model.compile(optimizer=Adam(1e-3), loss=focal_crossentropy, metrics=["accuracy"])
    path = str(tmp_path / "best.keras")
    history = model.fit(x_train, y_train, batch_size=64, epochs=20, validation_split=0.1, verbose=0,
                        callbacks=[EarlyStopping(monitor="val_loss", patience=1),
                                   ModelCheckpoint(path, monitor="val_loss", save_best_only=True)])
    val_losses = history.history["val_loss"]
    assert len(val_losses) < 20 and val_losses[-1] > min(val_losses)  # stopped after an epoch that got worse

    resumed = load_model(path)
    resumed.compile(optimizer=Adam(1e-3), loss=focal_crossentropy, metrics=["accuracy"])
    x_val, y_val = x_train[9000:], y_train[9000:]
    # The file holds the best epoch's weights: evaluated on the same rows it gives that epoch's val_loss.
    assert resumed.evaluate(x_val, y_val, verbose=0)[0] == pytest.approx(min(val_losses), rel=1e-5)
    assert model.evaluate(x_val, y_val, verbose=0)[0] == pytest.approx(val_losses[-1], rel=1e-5)
    more = resumed.fit(x_train, y_train, batch_size=64, epochs=2, validation_split=0.1, verbose=0)
    assert more.history["val_loss"][0] < val_losses[0]  # it went on from there, not from scratch
    _, accuracy = resumed.evaluate(x_test, y_test, verbose=0)
    assert accuracy >= 0.94, accuracy
