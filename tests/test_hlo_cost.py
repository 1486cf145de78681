"""tools/hlo_cost.py and tools/gpu_aot.py: bytes, FLOPs and kernel counts read from HLO text,
against numbers worked by hand; the AOT tool's plumbing rehearsed on this machine's CPU;
tools/kernel_ptx.py's counts of a PTX loop worked by hand."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import hlo_cost  # noqa: E402
import kernel_ptx  # noqa: E402

# The shapes of XLA's optimized GPU HLO text (as `compiled.as_text()` prints it), trimmed.
HLO = """HloModule jit_f, is_scheduled=true

%fused_slice_add (param_0: f32[12,768], param_1: f32[4,768]) -> f32[4,768] {
  %param_0 = f32[12,768]{1,0} parameter(0), metadata={scheduling_name="param_0"}
  %slice.1 = f32[4,768]{1,0} slice(%param_0), slice={[0:4], [0:768]}
  %param_1 = f32[4,768]{1,0} parameter(1)
  ROOT %add.1 = f32[4,768]{1,0} add(%slice.1, %param_1), metadata={op_name="jit(f)/layers/add"}
}

%gemm_fusion_dot (parameter_0: bf16[64,128], parameter_1: bf16[128,256]) -> bf16[64,256] {
  %parameter_0 = bf16[64,128]{1,0} parameter(0)
  %parameter_1 = bf16[128,256]{1,0} parameter(1)
  ROOT %dot.0 = bf16[64,256]{1,0} dot(%parameter_0, %parameter_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}, backend_config={"sizes":["16"]}
}

%fused_dus (p.0: f32[12,768], p.1: f32[1,768], p.2: s32[]) -> f32[12,768] {
  %p.0 = f32[12,768]{1,0} parameter(0)
  %p.1 = f32[1,768]{1,0} parameter(1)
  %p.2 = s32[] parameter(2)
  %c.0 = s32[] constant(0)
  ROOT %dus.0 = f32[12,768]{1,0} dynamic-update-slice(%p.0, %p.1, %p.2, %c.0)
}

%body (t.0: (s32[], f32[64,256])) -> (s32[], f32[64,256]) {
  %t.0 = (s32[], f32[64,256]{1,0}) parameter(0)
  %i.0 = s32[] get-tuple-element(%t.0), index=0
  %x.0 = f32[64,256]{1,0} get-tuple-element(%t.0), index=1
  %neg.0 = f32[64,256]{1,0} negate(%x.0), metadata={op_name="jit(f)/mlm_head/neg"}
  ROOT %r.0 = (s32[], f32[64,256]{1,0}) tuple(%i.0, %neg.0)
}

%cond (t.1: (s32[], f32[64,256])) -> pred[] {
  %t.1 = (s32[], f32[64,256]{1,0}) parameter(0)
  ROOT %lt.0 = pred[] constant(false)
}

ENTRY %main.1 (a: f32[12,768], b: f32[4,768], x: bf16[64,128], w: bf16[128,256], u: f32[1,768], i: s32[], h: f32[64,256], q: bf16[2,16,4,8]) -> f32[12,768] {
  %a = f32[12,768]{1,0} parameter(0)
  %b = f32[4,768]{1,0} parameter(1)
  %x = bf16[64,128]{1,0} parameter(2)
  %w = bf16[128,256]{1,0} parameter(3)
  %u = f32[1,768]{1,0} parameter(4)
  %i = s32[] parameter(5)
  %h = f32[64,256]{1,0} parameter(6)
  %q = bf16[2,16,4,8]{3,2,1,0} parameter(7)
  %f1 = f32[4,768]{1,0} fusion(%a, %b), kind=kLoop, calls=%fused_slice_add, metadata={op_name="jit(f)/layers/add"}
  %g = bf16[64,256]{1,0} fusion(%x, %w), kind=kCustom, calls=%gemm_fusion_dot, metadata={op_name="jit(f)/dot_general"}
  %d = f32[12,768]{1,0} fusion(%a, %u, %i), kind=kLoop, calls=%fused_dus
  %tup = (s32[], f32[64,256]{1,0}) tuple(%i, %h)
  %wl = (s32[], f32[64,256]{1,0}) while(%tup), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"5"}}
  %att = (bf16[2,16,4,8]{3,2,1,0}, u8[0]{0}) custom-call(%q, %q, %q), custom_call_target="__cudnn$fmhaSoftmax", metadata={op_name="jit(f)/attn/dot_product_attention"}
  %cb = (bf16[64,256]{1,0}, s8[33554432]{0}) custom-call(%x, %w), custom_call_target="__cublas$lt$matmul", metadata={op_name="jit(f)/up/dot_general"}, backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"]}}}
  ROOT %cp = f32[12,768]{1,0} copy(%d)
}
"""


def by_name(ks):
    return {k.name: k for k in ks}


def test_type_bytes_by_hand():
    assert hlo_cost.type_bytes("bf16[128,512,768]{2,1,0}") == 2 * 128 * 512 * 768
    assert hlo_cost.type_bytes("(f32[], s32[4]{0}, pred[3])") == 4 + 16 + 3
    assert hlo_cost.type_bytes("u8[0]{0}") == 0


def test_kernels_read_write_and_flops_by_hand():
    ks = by_name(hlo_cost.kernels(HLO))
    # free instructions (parameters, tuples, the while itself) are not kernels
    assert set(ks) == {"f1", "g", "d", "neg.0", "att", "cb", "cp"}
    f1 = ks["f1"]  # reads 4 of a's 12 rows through a slice, and all of b
    assert (f1.read, f1.written, f1.flops) == (4 * 768 * 4 + 4 * 768 * 4, 4 * 768 * 4, 0)
    assert f1.category == "layer elementwise"
    g = ks["g"]
    assert (g.read, g.written) == (64 * 128 * 2 + 128 * 256 * 2, 64 * 256 * 2)
    assert g.flops == 2 * 64 * 256 * 128 and g.category == "matmul"
    d = ks["d"]  # in place: a neither read nor rewritten; the update and the index read
    assert (d.read, d.written) == (768 * 4 + 4, 768 * 4)
    neg = ks["neg.0"]  # inside the while: 5 executions
    assert (neg.count, neg.read, neg.written) == (5, 64 * 256 * 4, 64 * 256 * 4)
    assert neg.category == "embedding and head"
    att = ks["att"]  # Q, K, V [B=2, L=16, N=4, K=8]: QK^T and PV, 2 * 2*2*4*16*16*8
    assert att.category == "attention" and att.flops == 4 * 2 * 4 * 16 * 16 * 8
    assert ks["cp"].category == "copies and transposes"
    cb = ks["cb"]  # cuBLAS: its 32 MiB workspace (the tuple's s8 element) is not written data
    assert (cb.read, cb.written) == (64 * 128 * 2 + 128 * 256 * 2, 64 * 256 * 2)
    assert cb.flops == 2 * 64 * 256 * 128 and cb.category == "matmul"


def test_roofline_and_summary_by_hand():
    ks = hlo_cost.kernels(HLO)
    g = by_name(ks)["g"]
    # max(114,688 B / 1e9 B/s, 4,194,304 FLOP / 1e12 FLOP/s) + 1e-6 s
    assert g.seconds(gemm=1e12, bandwidth=1e9, launch=1e-6) == pytest.approx(
        114_688 / 1e9 + 1e-6)
    assert g.seconds(gemm=1e9, bandwidth=1e12, launch=0) == pytest.approx(4_194_304 / 1e9)
    rows = hlo_cost.summary(ks, launch=0)
    n, gb, tf, ms = rows["total"]
    assert n == 1 + 1 + 1 + 5 + 1 + 1 + 1
    moved = sum(k.count * (k.read + k.written) for k in ks)
    assert gb == pytest.approx(moved / 1e9)
    assert tf == pytest.approx((2 * 2 * 64 * 256 * 128 + 4 * 2 * 4 * 16 * 16 * 8) / 1e12)
    assert ms == pytest.approx(sum(r[3] for c, r in rows.items() if c != "total"))
    assert rows["embedding and head"][0] == 5


HASH_HLO = """HloModule jit_h, is_scheduled=true

%fused_hash (p.3: u32[], p.4: f32[4,256]) -> f32[4,256] {
  %p.3 = u32[] parameter(0)
  %p.4 = f32[4,256]{1,0} parameter(1)
  %io = u32[4,256]{1,0} iota(), iota_dimension=1
  %kb = u32[4,256]{1,0} broadcast(%p.3), dimensions={}
  %x1 = u32[4,256]{1,0} xor(%io, %kb)
  %c16 = u32[] constant(16)
  %b16 = u32[4,256]{1,0} broadcast(%c16), dimensions={}
  %x2 = u32[4,256]{1,0} shift-right-logical(%x1, %b16)
  %x3 = u32[4,256]{1,0} multiply(%x2, %x1)
  %t = u32[] constant(100)
  %tb = u32[4,256]{1,0} broadcast(%t), dimensions={}
  %m = pred[4,256]{1,0} compare(%x3, %tb), direction=LT
  %z = f32[] constant(0)
  %zb = f32[4,256]{1,0} broadcast(%z), dimensions={}
  %h = f32[4,256]{1,0} multiply(%p.4, %p.4)
  ROOT %o = f32[4,256]{1,0} select(%m, %h, %zb)
}

ENTRY %main.2 (k: u32[], x: f32[4,256]) -> f32[4,256] {
  %k = u32[] parameter(0)
  %x = f32[4,256]{1,0} parameter(1)
  ROOT %f = f32[4,256]{1,0} fusion(%k, %x), kind=kLoop, calls=%fused_hash, metadata={op_name="jit(h)/layers/dropout/select_n"}
}
"""


def test_integer_work_by_hand():
    """A dropout-like kernel: xor, shift and multiply on uint32 and the compare of a uint32
    count one operation an element (4 x 1,024); the iota, broadcasts, the float multiply and
    the select do not. The roofline takes the integer time when it outlasts the bytes."""
    (k,) = hlo_cost.kernels(HASH_HLO)
    assert k.int_ops == 4 * 1024 and k.category == "dropout masks"
    assert (k.read, k.written) == (4 + 4 * 1024, 4 * 1024)
    assert k.seconds(bandwidth=1e12, launch=0, int_rate=1e9) == pytest.approx(4096 / 1e9)
    assert k.seconds(bandwidth=1e12, launch=0, int_rate=0) == pytest.approx(8196 / 1e12)
    assert k.seconds(bandwidth=1e9, launch=0, int_rate=1e12) == pytest.approx(8196 / 1e9)


# robertax.flash_attention's kernels as XLA prints them (the Triton IR's bytes left out).
FLASH_HLO = """HloModule jit_g, is_scheduled=true

ENTRY %main.3 (ids: u32[4], q: bf16[2,128,4,64], b: f32[2,128], lse: f32[2,4,128]) -> bf16[2,128,4,64] {
  %ids = u32[4]{0} parameter(0)
  %q = bf16[2,128,4,64]{3,2,1,0} parameter(1)
  %b = f32[2,128]{1,0} parameter(2)
  %lse = f32[2,4,128]{2,1,0} parameter(3)
  %fwd = (bf16[2,128,4,64]{3,2,1,0}, f32[2,4,128]{2,1,0}) custom-call(%ids, %q, %q, %q, %b), custom_call_target="__gpu$xla.gpu.triton", backend_config={debug = false, grid_x = 1 : i32, ir = "", name = "flash_attention_fwd_dropout", num_stages = 2 : i32}, metadata={op_name="jit(g)/layers/attn/pallas_call"}
  ROOT %dq = bf16[2,128,4,64]{3,2,1,0} custom-call(%ids, %q, %q, %q, %q, %lse, %lse, %b), custom_call_target="__gpu$xla.gpu.triton", backend_config={debug = false, grid_x = 1 : i32, ir = "", name = "flash_attention_dq", num_stages = 2 : i32}, metadata={op_name="jit(g)/layers/attn/pallas_call"}
}
"""


def test_flash_attention_kernels_by_hand():
    """The forward (2 products of 2·B·N·L·S·K) with dropout (12 integer operations a weight)
    and dQ (3 products, no dropout) are attention kernels timed at the attention rate."""
    fwd, dq = hlo_cost.kernels(FLASH_HLO)
    weights = 2 * 4 * 128 * 128
    assert fwd.category == dq.category == "attention"
    assert fwd.flops == 2 * 2 * weights * 64 and fwd.int_ops == 12 * weights
    assert dq.flops == 3 * 2 * weights * 64 and dq.int_ops == 0
    x = 2 * 128 * 4 * 64 * 2  # one bf16 [2, 128, 4, 64]
    assert fwd.read == 16 + 3 * x + 2 * 128 * 4 and fwd.written == x + 2 * 4 * 128 * 4
    assert fwd.seconds(attention=1e12, bandwidth=1e15, launch=0, int_rate=1e15) == \
        pytest.approx(fwd.flops / 1e12)
    assert fwd.seconds(attention=1e15, bandwidth=1e15, launch=0, int_rate=1e9) == \
        pytest.approx(12 * weights / 1e9)


# robertax.fused_norm's two kernels (model.fused_norm), with dropout and without.
NORM_HLO = """HloModule jit_g, is_scheduled=true

ENTRY %main.3 (ids: u32[4], x: bf16[2,64,96], v: f32[96]) -> bf16[2,64,96] {
  %ids = u32[4]{0} parameter(0)
  %x = bf16[2,64,96]{2,1,0} parameter(1)
  %v = f32[96]{0} parameter(2)
  %fwd = (bf16[2,64,96]{2,1,0}, bf16[2,64,96]{2,1,0}) custom-call(%ids, %x, %x, %v, %v, %v), custom_call_target="__gpu$xla.gpu.triton", backend_config={debug = false, grid_x = 2 : i32, ir = "", name = "fused_norm_fwd_dropout", num_stages = 1 : i32}, metadata={op_name="jit(g)/layers/mlp_norm/pallas_call"}
  ROOT %bwd = (bf16[2,64,96]{2,1,0}, f32[2,1,96]{2,1,0}, f32[2,1,96]{2,1,0}, f32[2,1,96]{2,1,0}) custom-call(%ids, %x, %x, %v), custom_call_target="__gpu$xla.gpu.triton", backend_config={debug = false, grid_x = 2 : i32, ir = "", name = "fused_norm_bwd", num_stages = 1 : i32}, metadata={op_name="jit(g)/layers/mlp_norm/pallas_call"}
}
"""


def test_fused_norm_kernels_by_hand():
    """Layer-norm kernels, memory-bound; with dropout 22 integer operations an element (the
    mask's hash), without none."""
    fwd, bwd = hlo_cost.kernels(NORM_HLO)
    n = 2 * 64 * 96
    assert fwd.category == bwd.category == "layer norm" and fwd.flops == bwd.flops == 0
    assert fwd.int_ops == 22 * n and bwd.int_ops == 0
    assert fwd.read == 16 + 2 * (2 * n) + 3 * 96 * 4 and fwd.written == 2 * (2 * n)
    assert bwd.read == 16 + 2 * (2 * n) + 96 * 4 and bwd.written == 2 * n + 3 * 2 * 96 * 4
    assert fwd.seconds(bandwidth=1e15, launch=0, int_rate=1e9) == pytest.approx(22 * n / 1e9)


# The shape of the PTX that XLA dumps for a Triton kernel, trimmed: a prologue, a loop that a
# predicated backward branch closes (6 instructions), a forward branch, an epilogue.
PTX = """.visible .entry flash_attention_fwd_dropout(
	.param .u64 .ptr .global .align 1 flash_attention_fwd_dropout_param_0
)
{
	.reg .b32 	%r<9>;
	ld.param.u64 	%rd1, [flash_attention_fwd_dropout_param_0];
	st.shared.v4.b32 	[%r1], {%r2, %r3, %r4, %r5};
$L__BB0_1:
	xor.b32 	%r6, %r1, %r2;
	shr.u32 	%r7, %r6, 16;
	mul.lo.s32 	%r8, %r7, 2146121005;
	ld.shared.u32 	%r2, [%r8];
	setp.lt.u32 	%p1, %r8, 64;
	@%p1 bra 	$L__BB0_1;
	bra.uni 	$L__BB0_3;
$L__BB0_3:
	shfl.sync.bfly.b32 	%r3, %r2, 1, 31, -1;
	bar.sync 	0;
	ret;
}
"""


def test_kernel_ptx_counts_the_loop_by_hand():
    """The loop is the block from a label to the branch back to it (6 instructions here; the
    forward branch closes no loop), and the data-movement counts read every instruction."""
    assert kernel_ptx.loop_instructions(PTX) == 6
    counts = kernel_ptx.kernel_counts(PTX)
    assert counts == {"loop": 6, "st.shared": 1, "ld.shared": 1, "bar": 1, "shfl": 1,
                      "local": 0, "wgmma": 0}


def test_no_entry_is_an_error():
    with pytest.raises(ValueError, match="no ENTRY"):
        hlo_cost.kernels("HloModule empty\n")


def test_gpu_aot_rehearses_on_the_local_cpu(tmp_path):
    """The tool's plumbing on this machine (--target=local): it compiles the tiny config and a
    variant, prints the table and writes one JSON row per compilation."""
    out = tmp_path / "rows.jsonl"
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "gpu_aot.py"), "--target=local",
         "--config=" + os.path.join(ROOT, "configs", "tiny.py"), "--config.batch_size=8",
         "--config.data.max_length=32", "--variant=nodrop:model.dropout_rate=0",
         f"--json_out={out}", "--top=3"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["label"] for x in rows] == ["config", "nodrop"]
    for x in rows:
        assert x["summary"]["total"][0] > 0 and x["summary"]["total"][1] > 0
    assert rows[1]["summary"]["total"][0] < rows[0]["summary"]["total"][0]  # no mask kernels
    assert "estimated ms (GB moved)" in r.stdout and "nodrop: the 3 largest" in r.stdout



def test_gpu_aot_h200_description():
    """--target=h200 describes the H100's chip with the H200's memory: only the bandwidth,
    memory size and name differ, and the roofline's HBM rate scales with the bandwidth."""
    code = ("import json, re, gpu_aot as g; "
            "f = lambda t: re.findall(r'(\\w+): (\"[^\"]*\"|\\S+)', t); "
            "print(json.dumps([[x, y] for x, y in zip(f(g.H100), f(g.H200)) if x != y] + "
            "[len(f(g.H100)) == len(f(g.H200)), g.RATES['h200']['bandwidth'], "
            "g.hlo_cost.BANDWIDTH]))")
    r = subprocess.run([sys.executable, "-c", code], cwd=os.path.join(ROOT, "tools"),
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0, r.stderr[-3000:]
    *diff, same_len, h200_bw, h100_bw = json.loads(r.stdout.strip().splitlines()[-1])
    assert same_len
    assert diff == [[["memory_bandwidth", "3352320000000"], ["memory_bandwidth", "4800000000000"]],
                    [["device_memory_size", "84929347584"], ["device_memory_size", "149250000000"]],
                    [["device_description_str", '"NVIDIA H100 80GB HBM3"'],
                     ["device_description_str", '"NVIDIA H200"']]]
    assert h200_bw == pytest.approx(h100_bw * 4.8 / 3.35)
