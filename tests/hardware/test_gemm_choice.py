"""Which library takes a step's large products: MKL on Intel CPUs, oneDNN on others (hardware/gemm.py)."""

import pytest
import torch

from hpctrain.hardware import gemm


@pytest.fixture
def vendor(monkeypatch):
    def set_vendor(name):
        monkeypatch.setattr(gemm, "cpu_vendor", lambda: name)
        gemm.large_product_linear.cache_clear()

    yield set_vendor
    gemm.large_product_linear.cache_clear()


@pytest.mark.skipif(gemm.onednn_linear() is None or not torch.backends.mkl.is_available(),
                    reason="this PyTorch lacks oneDNN or MKL")
@pytest.mark.parametrize("name, takes_onednn", [("GenuineIntel", False), ("AuthenticAMD", True), (None, True)])
def test_large_products_go_to_onednn_except_on_intel(vendor, name, takes_onednn):
    vendor(name)
    assert (gemm.large_product_linear() is gemm.onednn_linear()) is takes_onednn
    assert (gemm.large_product_linear() is None) is not takes_onednn


@pytest.mark.skipif(gemm.onednn_linear() is None or not torch.backends.mkl.is_available(),
                    reason="this PyTorch lacks oneDNN or MKL")
def test_the_plan_says_why_mkl_takes_every_product(vendor):
    vendor("GenuineIntel")
    assert gemm.backend_reason(0, 8) == ("MKL's torch.mm for all 8 products (on this Intel CPU MKL beats oneDNN at "
                                         "every size)")
    vendor("AuthenticAMD")
    assert gemm.backend_reason(0, 5) == "MKL's torch.mm for all 5 products (oneDNN pays from 2,500,000 multiply-adds)"
    assert gemm.backend_reason(2, 5).startswith("oneDNN for 2 of the step's 5 products")

