"""hpctrain's 2x2 max pooling kernels (engine/native/pooling.cpp) against ATen's max_pool2d (and
ReLU after it, for the fused kernel): the same values and the same gradients, bit for bit, ties
and NaN included."""

import pytest
import torch
import torch.nn.functional as F

from hpctrain.engine import native
from hpctrain.keras.native_forward import MaxPool2x2

pytestmark = pytest.mark.native_loop


def _images(n, height, width, channels, *, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, height, width, channels, generator=generator).permute(0, 3, 1, 2)


def _pooled_both_ways(x, relu=False):
    """(ours, ATen's) forward values and input gradients for the same output gradient."""
    grads = torch.randn(x.shape[0], x.shape[1], x.shape[2] // 2, x.shape[3] // 2).contiguous(
        memory_format=torch.channels_last)
    results = []
    aten = (lambda t: F.relu(F.max_pool2d(t, 2))) if relu else (lambda t: F.max_pool2d(t, 2))
    for pool in (lambda t: MaxPool2x2.apply(t, native.kernels(), relu), aten):
        leaf = x.detach().clone(memory_format=torch.channels_last).requires_grad_()
        out = pool(leaf)
        out.backward(grads)
        results.append((out.detach(), leaf.grad))
    return results


@pytest.mark.parametrize("relu", [False, True], ids=["pool", "pool_relu"])
@pytest.mark.parametrize("shape", [(3, 26, 26, 32), (2, 11, 11, 64), (2, 7, 10, 5), (4, 6, 6, 1)])
def test_values_and_gradients_equal_atens(shape, relu):
    (ours, our_grad), (aten, aten_grad) = _pooled_both_ways(_images(*shape), relu)
    assert torch.equal(ours, aten) and torch.equal(our_grad, aten_grad)
    assert ours.is_contiguous(memory_format=torch.channels_last)
    assert our_grad.is_contiguous(memory_format=torch.channels_last)
    if shape[1] % 2:  # the row an odd height leaves out takes no gradient
        assert not our_grad[:, :, -1].any()


@pytest.mark.parametrize("relu", [False, True], ids=["pool", "pool_relu"])
def test_ties_go_to_the_first_maximum_and_nan_wins_as_in_aten(relu):
    x = _images(2, 8, 8, 3)
    x[:, :, :4, :4] = 0.0  # whole windows of equal values, as ReLU'd or blank image regions give
    x[0, 1, 4, 5] = x[0, 1, 5, 4] = 9.0  # a tie between two corners of one window
    x[1, 2, 6, 7] = float("nan")
    x[1, 0, 2:4, 2:4] = -1.0  # a window ReLU zeroes
    (ours, our_grad), (aten, aten_grad) = _pooled_both_ways(x, relu)
    assert torch.equal(ours.isnan(), aten.isnan()) and torch.equal(ours.nan_to_num(), aten.nan_to_num())
    assert torch.equal(our_grad, aten_grad)


def test_inputs_it_cannot_take_are_refused_with_what_was_wrong():
    kernels = native.kernels()
    with pytest.raises(RuntimeError, match="channels-last memory"):
        kernels.max_pool2x2(torch.randn(2, 3, 8, 8))
    with pytest.raises(RuntimeError, match="float32"):
        kernels.max_pool2x2(torch.randn(2, 8, 8, 3, dtype=torch.float64).permute(0, 3, 1, 2))


def test_a_fit_that_looked_for_the_kernels_and_found_none_starts_their_build_when_it_ends(monkeypatch):
    from hpctrain import keras

    monkeypatch.setattr(native, "_state", {**native._state, "op": None, "error": None, "looked": False,
                                           "asked": False})
    monkeypatch.setattr(native, "_built", lambda: False)
    builds = []
    monkeypatch.setattr(native, "build_in_background", lambda: builds.append("started"))
    model = keras.Sequential([keras.layers.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.MaxPooling2D(2), keras.layers.Flatten(), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = torch.randn(32, 8, 8, 1).numpy(), torch.randint(0, 2, (32,)).numpy()

    class BuildsSoFar(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.during_fit = list(builds)

    seen = BuildsSoFar()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[seen])
    assert seen.during_fit == [] and builds == ["started"]  # after the fit, not while it trains
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert builds == ["started"]  # looked for once per process
