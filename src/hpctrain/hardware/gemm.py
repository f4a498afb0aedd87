"""Which library multiplies a large float32 matrix on the CPU: MKL or oneDNN, whichever is faster here.

``torch.mm`` on a CPU calls PyTorch's BLAS, MKL's SGEMM in its x86 builds. PyTorch also ships
oneDNN, whose matmul it uses for its fused linear layers (``torch.ops.mkldnn._linear_pointwise``).
Which is faster depends on the CPU's maker (``benchmarks/bench_gemm_backends.py``,
``benchmarks/results/gemm_backends.txt``, 2 threads):

    product (m x k x n)     AMD EPYC (AVX-512)          Intel Xeon, Ice Lake (AVX-512)
                            MKL      oneDNN + copy      MKL      oneDNN + copy
    256 x 785 x 128          237 us   126 us
    256 x 1025 x 1024       2486 us  1132 us            1.9 ms   2.3 ms
    1025 x 256 x 1024 (dW)                              1.8 ms   2.6 ms (no copy)

MKL runs its own tuned kernels on Intel CPUs and slower generic ones on others; there oneDNN's
are 2-2.5x faster from a few million multiply-adds on, while its fixed cost (~10 us a call) loses
on small products. On Intel, MKL is as fast or faster at every size and writes its result in
place, where oneDNN returns a new tensor to copy. So large products go to oneDNN only on CPUs
not made by Intel.

oneDNN's sums run in another order than MKL's: results agree to float32 rounding, not bit for bit.
"""

from __future__ import annotations

import functools

import torch

# At or above this many multiply-adds a product goes to oneDNN where it does (the two cross near
# 2 million on the AMD reference CPU).
ONEDNN_MIN_MACS = 2_500_000

INTEL = "GenuineIntel"


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


@functools.cache
def cpu_vendor() -> str | None:
    """``vendor_id`` of ``/proc/cpuinfo`` (``GenuineIntel``, ``AuthenticAMD``), or ``None`` where unread."""
    from hpctrain.hardware.inventory import parse_cpuinfo

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return parse_cpuinfo(f.read()).vendor
    except OSError:
        return None


@functools.cache
def large_product_linear():
    """oneDNN's linear (as :func:`onednn_linear`) where products of ``ONEDNN_MIN_MACS`` and more
    go to it on this machine, else ``None``: MKL's ``torch.mm`` then takes every product."""
    if torch.backends.mkl.is_available() and cpu_vendor() == INTEL:
        return None
    return onednn_linear()


def backend_reason(onednn: int, products: int) -> str:
    """The plan's ``matmul`` line: how many of a step's ``products`` run on oneDNN, and why."""
    if onednn:
        return (f"oneDNN for {onednn} of the step's {products} products (those of >= {ONEDNN_MIN_MACS:,} "
                "multiply-adds, where it beat MKL), MKL's torch.mm for the rest")
    if onednn_linear() is not None and large_product_linear() is None:
        return f"MKL's torch.mm for all {products} products (on this Intel CPU MKL beats oneDNN at every size)"
    return f"MKL's torch.mm for all {products} products (oneDNN pays from {ONEDNN_MIN_MACS:,} multiply-adds)"
