"""Compare a layer with a float64 reference written in plain torch: outputs and gradients to 1e-5."""

import numpy as np
import torch

TOLERANCE = 1e-5


def built(layer, x):
    layer.build((None, *x.shape[1:]))
    return layer


def assert_matches_reference(layer, x, reference, *, rng, input_grad=True, seed_weights=True):
    """``layer(x)`` against ``reference(x64, *weights64)``, weights in Keras's ``get_weights`` order.

    Weights are redrawn (so zero biases do not hide a missing term); the gradients of
    ``sum(out * g)`` for a random ``g`` are compared for the input and every trainable weight.
    """
    built(layer, x)
    if seed_weights:
        layer.set_weights([rng.normal(size=w.shape).astype("float32") if trainable else w
                           for w, trainable in zip(layer.get_weights(), _trainable_mask(layer))])
    x_own = torch.tensor(x, requires_grad=input_grad)
    out = layer(x_own)
    x64 = torch.tensor(x, dtype=torch.float64, requires_grad=input_grad)
    weights64 = [torch.tensor(w, dtype=torch.float64, requires_grad=trainable)
                 for w, trainable in zip(layer.get_weights(), _trainable_mask(layer))]
    expected = reference(x64, *weights64)
    assert tuple(out.shape) == tuple(expected.shape)
    np.testing.assert_allclose(out.detach().numpy(), expected.detach().numpy(), atol=TOLERANCE, rtol=TOLERANCE)

    g = rng.normal(size=tuple(out.shape))
    (out * torch.tensor(g, dtype=torch.float32)).sum().backward()
    (expected * torch.tensor(g)).sum().backward()
    if input_grad:
        np.testing.assert_allclose(x_own.grad.numpy(), x64.grad.numpy(), atol=TOLERANCE, rtol=TOLERANCE)
    for own, ref in zip(layer.weights, weights64):
        if ref.requires_grad:
            np.testing.assert_allclose(own.grad.numpy(), ref.grad.numpy(), atol=TOLERANCE, rtol=TOLERANCE)
    return out


def _trainable_mask(layer):
    return [w.requires_grad for w in layer.weights]
