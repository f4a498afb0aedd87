"""Which library multiplies a large float32 matrix on the CPU: oneDNN where it is faster than MKL.

``torch.mm`` on a CPU calls MKL's SGEMM. PyTorch also ships oneDNN, whose matmul it uses for its
fused linear layers (``torch.ops.mkldnn._linear_pointwise``). On the reference machine (2-core
AMD EPYC with AVX-512) oneDNN's is 2-2.5x faster from a few million multiply-adds on, while its
fixed cost (~10 us a call) loses on small products (``benchmarks/bench_gemm_backends.py``,
``benchmarks/results/gemm_backends.txt``):

    product (m x k x n)     MKL        oneDNN + copy into place
    32 x 785 x 32           10.8 us    16.3 us
    128 x 785 x 32          33.8 us    25.7 us
    256 x 785 x 128          237 us     126 us
    256 x 1025 x 1024       2486 us    1132 us

oneDNN's result is a new tensor, copied (or scaled) into the step's buffer; its sums run in
another order than MKL's, so results agree to float32 rounding, not bit for bit.
"""

from __future__ import annotations

import functools

import torch

# At or above this many multiply-adds a product goes to oneDNN (the two cross near 2 million).
ONEDNN_MIN_MACS = 2_500_000


@functools.cache
def onednn_linear():
    """``linear(x, weight, bias, "none", [], "")`` = ``x @ weight.T + bias`` by oneDNN on dense
    CPU float32 tensors, or ``None`` where this PyTorch has no oneDNN or it fails on a trial."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        linear = torch.ops.mkldnn._linear_pointwise
        x, weight = torch.ones(2, 3), torch.ones(4, 3)
        if not torch.equal(linear(x, weight, None, "none", [], ""), torch.full((2, 4), 3.0)):
            return None
    except (AttributeError, RuntimeError):
        return None
    return linear
