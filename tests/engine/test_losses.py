"""Built-in losses against PyTorch's own functions."""

import pytest
import torch

from hpctrain.engine.losses import CrossEntropy


@pytest.mark.parametrize("rows,classes", [(64, 10), (5000, 10), (5000, 3), (5000, 32)])
def test_cross_entropy_from_logits_equals_torch_for_small_and_bulk_inputs(rows, classes):
    generator = torch.Generator().manual_seed(rows + classes)
    logits = (torch.randn(rows, classes, generator=generator) * 8).requires_grad_()
    target = torch.randint(0, classes, (rows,), generator=generator)
    loss = CrossEntropy(sparse=True, from_logits=True)
    torch.testing.assert_close(loss.per_sample(logits, target),
                               torch.nn.functional.cross_entropy(logits, target, reduction="none"),
                               rtol=1e-6, atol=1e-5)
    mean = loss(logits, target)
    reference = torch.nn.functional.cross_entropy(logits, target)
    torch.testing.assert_close(mean, reference, rtol=1e-6, atol=1e-6)
    (gradient,) = torch.autograd.grad(mean, logits)
    (reference_gradient,) = torch.autograd.grad(reference, logits)
    torch.testing.assert_close(gradient, reference_gradient, rtol=1e-5, atol=1e-9)
