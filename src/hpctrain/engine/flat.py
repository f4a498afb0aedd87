"""Tensors laid end to end in one buffer, so a per-tensor kernel can run once over all of them.

The fused Adam kernel costs a fixed overhead per tensor it is given: for the seed MLP's four
parameters it measured 18 us per step against 11 us for the same values as one tensor. The
static executor therefore keeps parameters, gradients and Adam's moments each in one buffer;
every per-parameter tensor is a view into it, so modules, optimizers and checkpoints see the
usual per-parameter tensors.
"""

from __future__ import annotations

import torch


def flat_view(tensors) -> torch.Tensor | None:
    """One 1-D tensor aliasing ``tensors`` when they lie end to end in one storage, else ``None``."""
    tensors = list(tensors)
    if not tensors:
        return None
    first = tensors[0]
    storage = first.untyped_storage()
    offset = first.storage_offset()
    for tensor in tensors:
        if (tensor.dtype != first.dtype or not tensor.is_contiguous()
                or tensor.untyped_storage().data_ptr() != storage.data_ptr() or tensor.storage_offset() != offset):
            return None
        offset += tensor.numel()
    return first.new_empty(0).set_(storage, first.storage_offset(), (offset - first.storage_offset(),))


def lay_end_to_end(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of ``tensors`` as views into one new buffer; the tensors themselves if they already are
    views like that, or if their dtypes or devices differ."""
    if flat_view(tensors) is not None or len({(t.dtype, t.device) for t in tensors}) != 1:
        return tensors
    flat = torch.cat([tensor.detach().reshape(-1) for tensor in tensors])
    views, offset = [], 0
    for tensor in tensors:
        views.append(flat[offset:offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()
    return views


def move_parameters_end_to_end(params: list[torch.nn.Parameter]) -> None:
    """Re-homes the parameters' values into one buffer in place (``.data``): the same Parameter
    objects, so modules and optimizers holding them are unaffected."""
    with torch.no_grad():
        for param, view in zip(params, lay_end_to_end(params)):
            if view is not param:
                param.data = view
