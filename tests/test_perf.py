"""FLOPs per token and MFU, against numbers worked by hand."""

import pytest

from robertax import perf


def test_flops_per_token_roberta_base_by_hand():
    # L=12, H=768, T=512, V=50265, f = 80/512 = 0.15625 (the gathered head's capacity)
    t = perf.flops_per_token(12, 768, 512, 50265, 80 / 512)
    assert t.layers == 72 * 12 * 768 ** 2 == 509_607_936
    assert t.attention == 12 * 12 * 768 * 512 == 56_623_104
    # 6 * 0.15625 * (589,824 + 38,603,520) = 0.9375 * 39,193,344
    assert t.head == pytest.approx(36_743_760)
    assert t.total == pytest.approx(602_974_800)
    full = perf.flops_per_token(12, 768, 512, 50265, 1.0)  # transformers' full head
    assert full.head == pytest.approx(6 * 39_193_344)


def test_general_ffn_width_reduces_to_72LH2():
    assert perf.flops_per_token(2, 64, 128, 1000, 0.0, intermediate=256).layers == 72 * 2 * 64 ** 2
    # FFN 3H instead of 4H: 6*L*(4H^2 + 2*H*3H) = 60*L*H^2
    assert perf.flops_per_token(2, 64, 128, 1000, 0.0, intermediate=192).layers == 60 * 2 * 64 ** 2


def test_mfu_by_hand():
    # 447,373 tokens/s x 602,974,800 FLOPs/token on one 989 TFLOP/s device = 27.27%
    assert perf.mfu(447_373, 602_974_800, 1, 989e12) == pytest.approx(0.27275, abs=5e-5)
    assert perf.mfu(1000.0, 1e9, 8, 1e12) == pytest.approx(1e12 / 8e12)
    assert perf.mfu(1000.0, 1e9, 1, None) is None  # unknown device: no MFU


def test_peak_table_matches_device_kinds():
    class Dev:
        device_kind = "NVIDIA H100 80GB HBM3"
    assert perf.device_peak_flops(Dev()) == 989e12
    Dev.device_kind = "cpu"
    assert perf.device_peak_flops(Dev()) is None
