"""Inverted dropout with the engine's own mask: 15-bit uniform levels compared to the rate.

torch's CPU generator draws one value at a time, so a mask costs what its draws cost. For the
MNIST convnet's 128 x 1,600 activations ``bernoulli_`` (under ``F.dropout`` and
``native_dropout``) takes 2.9 ms, a float32 uniform per value compared to the rate 0.81 ms, and
the mask here 0.41 ms: half a 32-bit draw per value (``random_`` on int32 words, read as two
15-bit levels each), then a comparison (``benchmarks/bench_dropout_mask.py``,
``benchmarks/results/dropout_mask.txt``). A value is kept with probability
``1 - ceil(rate * 2**15) / 2**15``, within 2**-15 of ``1 - rate``. Elsewhere (CUDA, whose
generator is not serial) the mask is a float32 uniform compared to the rate. Keras's unseeded
``Dropout`` on hpctrain's native forward, the static executor and the C++ step loop all draw
this mask by the same ATen calls from the same global generator, so they drop the same values.
"""

from __future__ import annotations

import math

import torch

LEVELS = 1 << 15  # each 31-bit int32 draw of random_() gives two uniform 15-bit levels


def keep_threshold(rate: float) -> int:
    """The level from which a value is kept (step_loop.cpp computes the same)."""
    return math.ceil(rate * LEVELS)


def scaled_keep_mask(like: torch.Tensor, rate: float) -> torch.Tensor:
    """``1 / (1 - rate)`` where a value is kept, 0 where it is dropped, shaped and typed as ``like``."""
    # float32 whatever ``like``'s precision: the scale 1 / (1 - rate) rounded once, as Keras does.
    if like.device.type == "cpu":
        count = like.numel()
        words = torch.empty((count + 1) // 2, dtype=torch.int32).random_()
        levels = words.view(torch.int16)[:count].view(like.shape).bitwise_and_(LEVELS - 1)
        mask = torch.ge(levels, keep_threshold(rate), out=torch.empty(like.shape, dtype=torch.float32))
    else:
        mask = torch.rand(like.shape, dtype=torch.float32, device=like.device).ge_(rate)
    mask = mask.mul_(1.0 / (1.0 - rate))
    return mask if like.dtype == torch.float32 else mask.to(like.dtype)


def dropout(x: torch.Tensor, rate: float) -> torch.Tensor:
    """Training-mode dropout of ``x`` (autograd records one multiplication by the mask)."""
    return x * scaled_keep_mask(x, rate) if rate else x
