"""tf.GradientTape and tf.function: the custom training loop of the TF2 guides, against torch autograd."""

import numpy as np
import pytest
import torch

import hpctrain as tf

keras = tf.keras


def _data():
    rng = np.random.default_rng(3)
    return rng.normal(size=(24, 5)).astype(np.float32), rng.integers(0, 3, size=24)


def _model():
    keras.utils.set_random_seed(5)
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(7, activation="relu"), keras.layers.Dense(3)])


def _reference_step(weights, x, y, learning_rate):
    """The same step written in plain torch: forward, mean cross-entropy, autograd, SGD."""
    w1, b1, w2, b2 = weights
    logits = torch.relu(x @ w1 + b1) @ w2 + b2
    loss = torch.nn.functional.cross_entropy(logits, y)
    grads = torch.autograd.grad(loss, weights)
    with torch.no_grad():
        updated = [w - learning_rate * g for w, g in zip(weights, grads)]
    return [u.requires_grad_(True) for u in updated], grads, float(loss)


def test_custom_training_loop_matches_torch_autograd():
    x, y = _data()
    model = _model()
    optimizer = keras.optimizers.SGD(learning_rate=0.1)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    reference = [torch.tensor(w, requires_grad=True) for w in model.get_weights()]
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)

    @tf.function
    def train_step(x_batch, y_batch):
        with tf.GradientTape() as tape:
            logits = model(x_batch, training=True)
            loss_value = loss_fn(y_batch, logits)
        grads = tape.gradient(loss_value, model.trainable_weights)
        optimizer.apply_gradients(zip(grads, model.trainable_weights))
        return loss_value, grads

    for epoch in range(2):
        for x_batch, y_batch in dataset:
            loss_value, grads = train_step(x_batch, y_batch)
            reference, reference_grads, reference_loss = _reference_step(reference, x_batch, y_batch.long(), 0.1)
            assert float(loss_value) == pytest.approx(reference_loss, abs=1e-6)
            assert len(grads) == 4 and all(isinstance(g, torch.Tensor) for g in grads)
            for g, r in zip(grads, reference_grads):
                np.testing.assert_allclose(g.detach().cpu().numpy(), r.numpy(), atol=1e-6)
    for w, r in zip(model.get_weights(), reference):
        np.testing.assert_allclose(w, r.detach().numpy(), atol=1e-6)
    assert float(np.abs(model.get_weights()[0] - _model().get_weights()[0]).max()) > 1e-3  # it did train


def test_persistent_tape_and_watch_on_plain_tensors():
    x = torch.tensor([3.0, -1.0])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = x * x
        z = tf.reduce_sum(y * y)
    assert tape.gradient(z, x).tolist() == [108.0, -4.0]  # d(sum x^4)/dx = 4x^3
    assert tape.gradient(y, x).tolist() == [6.0, -2.0]  # summed over y's elements: 2x
    assert [g.tolist() for g in tape.gradient([z, y], [x])] == [[114.0, -6.0]]  # targets summed


def test_non_persistent_tape_computes_once():
    x = torch.tensor(2.0)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = x ** 3
    assert float(tape.gradient(y, x)) == 12.0
    assert x.requires_grad is False  # the watch ends with the tape
    with pytest.raises(RuntimeError) as error:
        tape.gradient(y, x)
    assert str(error.value) == ("A non-persistent GradientTape can only be used to compute one set of "
                                "gradients (or jacobians)")


def test_unconnected_sources_dict_structure_and_output_gradients():
    a, b = keras.Variable(2.0), keras.Variable(5.0)
    with tf.GradientTape(persistent=True) as tape:
        y = a * a
    grads = tape.gradient(y, {"a": a, "b": b})
    assert float(grads["a"]) == 4.0 and grads["b"] is None
    assert float(tape.gradient(y, [a, b], unconnected_gradients="zero")[1]) == 0.0
    assert float(tape.gradient(y, a, output_gradients=torch.tensor(3.0))) == 12.0
    assert tape.gradient(torch.tensor(1.0), [a]) == [None]  # a target computed from no source
    assert float(tape.gradient([torch.tensor(1.0), y], a)) == 4.0


def test_tape_records_under_no_grad_and_stop_recording():
    v = keras.Variable(np.array([1.0, 2.0], dtype=np.float32))
    with torch.no_grad():
        with tf.GradientTape() as tape:
            y = tf.reduce_sum(v * v)
            with tape.stop_recording():
                ignored = v * 10.0
    assert ignored.requires_grad is False
    assert tape.gradient(y, v).tolist() == [2.0, 4.0]


def test_watch_rejects_integer_tensors():
    with tf.GradientTape() as tape:
        with pytest.raises(ValueError) as error:
            tape.watch(torch.tensor([1, 2]))
    assert str(error.value) == ("tape.watch needs a floating-point tensor created outside the tape's "
                                "computation (got a torch.int64 leaf tensor).")


def test_function_runs_the_python_function_as_is():
    calls = []

    @tf.function
    def square(v):
        calls.append(v)
        return v * v

    @tf.function(jit_compile=True, reduce_retracing=True)
    def cube(v):
        return v ** 3

    assert (square(3), square(4), cube(2)) == (9, 16, 8)
    assert calls == [3, 4]  # traced never, run every time
    assert square.__name__ == "square" and square.python_function(5) == 25

    class Scaler:
        factor = 3

        @tf.function
        def __call__(self, v):
            return self.factor * v

    assert Scaler()(2) == 6
