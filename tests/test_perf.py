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


def test_profile_summary_sums_ops_by_name():
    """tools/profile_summary.py: op time per step, suffixes merged, runtime events left out,
    and only device events when a device process is in the trace."""
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))
    import profile_summary as ps
    meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}}]
    cpu = [{"ph": "X", "pid": 1, "tid": 1, "name": "fusion.3", "dur": 3000},
           {"ph": "X", "pid": 1, "tid": 2, "name": "fusion.17", "dur": 1000},
           {"ph": "X", "pid": 1, "tid": 1, "name": "ynn_fusion", "dur": 6000},
           {"ph": "X", "pid": 1, "tid": 1, "name": "while.2", "dur": 10000},  # a container
           {"ph": "X", "pid": 1, "tid": 1, "name": "ThunkExecutor::Execute", "dur": 9000},
           {"ph": "X", "pid": 1, "tid": 1, "name": "$profiler.py:1 trace", "dur": 9000}]
    s = ps.summarize(meta + cpu, steps=2)
    assert not s["device"]
    assert s["rows"] == [("ynn_fusion", 3.0, 0.5, 1), ("fusion", 2.0, 1.0, 2)]
    assert s["total_ms"] == 5.0
    gpu = meta + cpu + [
        {"ph": "M", "name": "process_name", "pid": 7, "args": {"name": "/device:GPU:0"}},
        {"ph": "X", "pid": 7, "tid": 1, "name": "cutlass_gemm", "dur": 500}]
    s = ps.summarize(gpu)
    assert s["device"] and s["rows"] == [("cutlass_gemm", 0.5, 1.0, 1)]
    assert "cutlass_gemm" in ps.format_table(s)
