"""Numerical checks for the GPU fast paths (tools/gpu_check.sh runs this on a GPU).

A RoBERTa-base-shaped model (`--small`: 2 layers, width 128) on a padded batch, at its initial
weights and at 3x them (attention far from uniform). Logits are compared over real tokens and the
real vocabulary only: the pretraining module fills the padded vocabulary columns with finfo.min,
and those sentinels would swamp every norm. Errors are ||a - b|| / ||b||.

1. float32 robertax vs float32 transformers (same weights, both full-precision matrix products):
   < 1e-4. The float32 reference for everything below.
2. bfloat16 robertax (XLA attention) vs float32: at most 2x transformers' own bf16-autocast error
   on the same weights. robertax keeps the residual stream in bf16, autocast keeps LayerNorm
   outputs in float32. On the CPU (base, 8 x 512): robertax 8.2e-3 vs transformers 7.7e-3 at
   init; at 3x a 12-layer post-LN stack amplifies rounding and transformers' own bf16 is 1.1e-1
   from its float32.
3. cuDNN flash attention (bf16) vs float32: no worse than XLA attention in bf16 (at most 1.25x its
   error + 1e-3), with padding as key lengths (also with fused_qkv, at init) and, at 3x, with
   packed rows as a dense segment mask.
4. Without a GPU: fused_qkv and the unrolled layer loop (float32, at init) equal the scanned
   model (< 1e-5). The checks above run the scanned loop (fast to compile); on a GPU the
   unrolled training default is checked once against float32, with cuDNN.
5. Gradients of an MLM-style loss at init (encoder layers): bf16 XLA and bf16 cuDNN vs float32,
   and cuDNN vs XLA, < 5e-2; cuDNN with model.layer_norm_vjp or model.fold_attention_biases
   and XLA with model.attention_vjp no worse than without (1.25x + 1e-3).
6. robertax's fused attention with dropout (model.attention="pallas", Triton on a GPU, Pallas's
   interpreter on the CPU) in bf16: logits (padding as key lengths) and gradients vs float32
   no worse than XLA attention in bf16 (1.25x + 1e-3); the kernel alone with attention dropout
   0.1 against the same computation in XLA with the same mask (`flash_attention.reference`),
   output and gradients, float32 reference, no worse than that XLA computation in bf16.
7. model.fused_norm (each layer's residual add, dropout and LayerNorm in one Triton kernel) in
   bf16: logits and gradients vs float32 no worse than without it (1.25x + 1e-3); the kernel
   alone with dropout 0.1 against the same computation in XLA with the same mask
   (`fused_norm.reference`), output and gradients, float32 reference, no worse than that XLA
   computation in bf16.
`--checks=` picks groups (default: all): `reference` (1, 2 and the bf16 XLA gradients),
`cudnn` (3, the cuDNN gradients, which kernels each path compiles to), `pallas` (6), `switches`
(4, fused QKV and the unrolled loop with cuDNN, layer_norm_vjp, fold_attention_biases,
attention_vjp), `norm` (7). tools/gpu_check.sh runs them as items of their own
(correct_cudnn, ...), so that a session's time limit cannot cut the cuDNN checks, as it did on
2026-11-26.
Prints one line per check with the measured error and PASS/FAIL; exits 1 on any failure. A check
that raises (the Triton kernels under a JAX whose Triton cannot compile them) is one FAIL line
with the exception, and the checks after it still run.
Without a GPU the cuDNN checks are skipped and layer_norm_vjp and fold_attention_biases are
checked with XLA attention
(tests/test_perf.py runs `--small` on the CPU).
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from robertax import convert, flash_attention, fused_norm  # noqa: E402
from robertax.model import RobertaConfig, RobertaForPretraining, init_params  # noqa: E402

failures = []
START = time.perf_counter()


def rel(a, b, mask=None):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if mask is not None:
        a, b = a[mask], b[mask]
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def check(name, err, tol):
    ok = np.isfinite(err) and err < tol
    print(f"{name:<58} rel err {err:.2e}  (tol {tol:.1e})  {'PASS' if ok else 'FAIL'}  "
          f"[{time.perf_counter() - START:.0f} s]", flush=True)
    if not ok:
        failures.append(name)


def guarded(name, fn):
    """Run fn (checks through robertax's Triton kernels, which a new JAX's Triton may fail to
    compile): an exception is one FAIL line naming it, and the checks after it still run."""
    try:
        fn()
    except Exception as e:
        print(f"{name:<58} raised {type(e).__name__}: {str(e)[:300]}  FAIL", flush=True)
        failures.append(name)


def transformers_logits(config, params, ids, real):
    """transformers' RobertaForMaskedLM on the same weights: float32 and bf16 autocast."""
    import torch
    import transformers
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    with tempfile.TemporaryDirectory() as d:
        convert.to_hf(config, params, d)
        hf = transformers.RobertaForMaskedLM.from_pretrained(
            d, attn_implementation="sdpa").to(dev).eval()
    t_ids = torch.tensor(np.asarray(ids), device=dev)
    t_mask = torch.tensor(real, device=dev)
    with torch.no_grad():
        f32 = hf(t_ids, attention_mask=t_mask).logits.float().cpu().numpy()
        with torch.autocast(dev, dtype=torch.bfloat16):
            bf16 = hf(t_ids, attention_mask=t_mask).logits.float().cpu().numpy()
    return f32, bf16


def flash_dropout_checks(B, L, N, K, kv):
    """The fused kernel with attention dropout 0.1 against XLA with the same mask: output and
    the gradients of a fixed linear loss, bf16 vs float32."""
    ks = jax.random.split(jax.random.key(1), 4)
    q, k, v = (jax.random.normal(x, (B, L, N, K), jnp.float32) for x in ks[:3])
    w = jax.random.normal(ks[3], (B, L, N, K), jnp.float32)
    valid = jnp.arange(L)[None, :] < kv[:, None]
    seed = jnp.array([2019, 7], jnp.uint32)

    def out_and_grads(fn, dtype):
        def loss(q, k, v):
            o = fn(q.astype(dtype), k.astype(dtype), v.astype(dtype), valid, seed, 0.1)
            return (o.astype(jnp.float32) * w).sum(), o
        (_, o), g = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
        return o, np.concatenate([np.asarray(x, np.float64).ravel() for x in g])

    kernel_vs_xla("pallas attention dropout 0.1", out_and_grads, flash_attention.reference,
                  flash_attention.attention)


def kernel_vs_xla(label, out_and_grads, reference, kernel):
    """`kernel` in bf16 against `reference` (the same computation in XLA) in float32, output
    and gradients: no worse than `reference` in bf16 (1.25x + 1e-3)."""
    with jax.default_matmul_precision("highest"):
        o32, g32 = out_and_grads(reference, jnp.float32)
    o_x, g_x = out_and_grads(reference, jnp.bfloat16)
    o_k, g_k = out_and_grads(kernel, jnp.bfloat16)
    check(f"bf16 {label} vs f32 output (<=XLA's)", rel(o_k, o32), 1.25 * rel(o_x, o32) + 1e-3)
    check(f"bf16 {label} vs f32 gradients (<=XLA's)", rel(g_k, g32),
          1.25 * rel(g_x, g32) + 1e-3)


def fused_norm_dropout_checks(B, L, D):
    """The fused residual-dropout-LayerNorm kernel with dropout 0.1 against XLA with the same
    mask: output and the gradients of a fixed linear loss, bf16 vs float32."""
    ks = jax.random.split(jax.random.key(2), 6)
    x, h, w = (jax.random.normal(k, (B, L, D), jnp.float32) for k in ks[:3])
    scale = 1 + 0.2 * jax.random.normal(ks[3], (D,))
    bias, h_bias = (0.2 * jax.random.normal(k, (D,)) for k in ks[4:])
    key = jnp.array([2019, 7], jnp.uint32)

    def out_and_grads(fn, dtype):
        def loss(x, h, hb, scale, bias):
            y = fn(x.astype(dtype), h.astype(dtype), scale, bias, key, 0.1, 1e-5, h_bias=hb)
            return (y.astype(jnp.float32) * w).sum(), y
        (_, y), g = jax.jit(jax.value_and_grad(loss, argnums=range(5), has_aux=True))(
            x, h, h_bias, scale, bias)
        return y, np.concatenate([np.asarray(t, np.float64).ravel() for t in g])

    kernel_vs_xla("fused_norm dropout 0.1", out_and_grads, fused_norm.reference,
                  fused_norm.residual_norm)


GROUPS = ("reference", "cudnn", "pallas", "switches", "norm")


def parse_groups(argv) -> set:
    """--checks=a,b (default: every group) -> the set of groups to run."""
    chosen = set(GROUPS)
    for arg in argv:
        if arg.startswith("--checks="):
            chosen = set(filter(None, arg.split("=", 1)[1].split(",")))
            unknown = chosen - set(GROUPS)
            if unknown:
                raise SystemExit(f"--checks: unknown group(s) {sorted(unknown)}; the groups are "
                                 f"{', '.join(GROUPS)}")
        elif arg != "--small":
            raise SystemExit(f"unknown argument {arg!r}; usage: gpu_correctness.py [--small] "
                             f"[--checks={','.join(GROUPS)}]")
    return chosen


def main():
    want = parse_groups(sys.argv[1:]).__contains__
    print(f"devices: {jax.devices()}  jax {jax.__version__}", flush=True)
    small = "--small" in sys.argv[1:]
    gpu = jax.default_backend() == "gpu"
    # The layer loop scanned: one compiled layer body, so the ~15 programs below compile fast;
    # the unrolled default is checked once on the GPU (and equals the scan in float32, check 4).
    base = RobertaConfig.base(pad_vocab_to=128, dropout_rate=0.0, attention_dropout_rate=0.0,
                              scan_unroll=1)
    if small:
        base = base.replace(vocab_size=1000, hidden_size=128, num_layers=2, num_heads=2,
                            intermediate_size=512)
    V = base.vocab_size
    init = init_params(RobertaForPretraining(base), jax.random.key(0))
    B, L = (4, 128) if small else (8, 512)
    rng = np.random.default_rng(0)
    ids = rng.integers(4, V, size=(B, L)).astype(np.int32)
    lengths = np.array([512, 500, 384, 256, 129, 64, 511, 300])[:B] * L // 512
    ids[np.arange(L)[None] >= lengths[:, None]] = 1
    ids[:, 0] = 0
    real = ids != 1
    ids = jnp.asarray(ids)
    kv = jnp.asarray(lengths, jnp.int32)
    bf16 = dict(dtype=jnp.bfloat16)

    def logits(params, cfg, x=ids, **kw):  # jitted, as in training; the real vocabulary only
        fn = jax.jit(lambda p, x: RobertaForPretraining(cfg).apply(
            {"params": p}, x, **kw).mlm_logits[..., :V])
        if jnp.dtype(cfg.dtype) == jnp.float32:  # the reference: full-precision products
            with jax.default_matmul_precision("highest"):
                return fn(params, x)
        return fn(params, x)

    # Every group compares against float32 and against XLA attention in bf16, so those two are
    # computed whatever the groups.
    for scale in (1.0, 3.0):
        params = jax.tree.map(lambda p: p * scale if p.ndim >= 2 else p, init)
        tag = f"[{scale:g}x init]"
        f32 = logits(params, base.replace(attention="xla"))
        xla_err = rel(logits(params, base.replace(attention="xla", **bf16)), f32, real)
        if want("reference"):
            t32, t16 = transformers_logits(base, params, ids, real)
            check(f"{tag} f32 vs transformers f32 logits", rel(f32, t32, real), 1e-4)
            torch_err = rel(t16, t32, real)
            print(f"{tag} transformers bf16 autocast vs f32 logits: rel err {torch_err:.2e}",
                  flush=True)
            check(f"{tag} bf16 XLA vs f32 logits (2x transformers')", xla_err, 2 * torch_err)
        else:
            print(f"{tag} bf16 XLA vs f32 logits: rel err {xla_err:.2e}", flush=True)
        if want("pallas"):
            name = f"{tag} bf16 pallas (kv lengths) vs f32 (<=XLA's)"
            guarded(name, lambda: check(name, rel(logits(
                params, base.replace(attention="pallas", **bf16), kv_lengths=kv), f32, real),
                1.25 * xla_err + 1e-3))
        if want("norm"):
            name = f"{tag} bf16 + fused_norm (kv lengths) vs f32 (<=XLA's)"
            fused = base.replace(attention="cudnn" if gpu else "xla", fused_norm=True, **bf16)
            guarded(name, lambda: check(name, rel(logits(params, fused, kv_lengths=kv), f32,
                                                  real), 1.25 * xla_err + 1e-3))
        if want("switches") and scale == 1.0 and not gpu:
            # structure, not numerics (a GPU spends its time below)
            for name, cfg in (("fused QKV", base.replace(fused_qkv=True)),
                              ("unrolled layers", base.replace(scan_unroll=0))):
                check(f"{tag} f32 {name} vs f32 logits",
                      rel(logits(params, cfg.replace(attention="xla")), f32, real), 1e-5)
        if not gpu:
            continue
        cudnn = base.replace(attention="cudnn", **bf16)
        if want("cudnn"):
            check(f"{tag} bf16 cuDNN (kv lengths) vs f32 (<=XLA's)",
                  rel(logits(params, cudnn, kv_lengths=kv), f32, real), 1.25 * xla_err + 1e-3)
        if scale == 1.0:
            if want("switches"):
                check(f"{tag} bf16 cuDNN unrolled (training default) vs f32 (<=XLA's)",
                      rel(logits(params, cudnn.replace(scan_unroll=0), kv_lengths=kv), f32,
                          real), 1.25 * xla_err + 1e-3)
                check(f"{tag} bf16 cuDNN fused QKV vs f32 (<=XLA's)",
                      rel(logits(params, cudnn.replace(fused_qkv=True), kv_lengths=kv), f32,
                          real), 1.25 * xla_err + 1e-3)
            continue
        if not want("cudnn"):
            continue
        # Packed rows (at 3x): two inputs per row, attention restricted by segment ids.
        seg = np.where(np.arange(L)[None] < L // 2, 1, 2).repeat(B, 0).astype(np.int32)
        pos = np.where(seg == 1, np.arange(L)[None] + 2,
                       np.arange(L)[None] - L // 2 + 2).astype(np.int32)
        packed = ids.at[:, L // 2].set(0)
        kw = dict(segment_ids=jnp.asarray(seg), position_ids=jnp.asarray(pos))
        p32 = logits(params, base.replace(attention="xla"), packed, **kw)
        p_xla = rel(logits(params, base.replace(attention="xla", **bf16), packed, **kw), p32)
        try:
            p_cudnn = rel(logits(params, cudnn, packed, **kw), p32)
            print(f"{tag} packed rows: bf16 XLA vs f32 rel err {p_xla:.2e}", flush=True)
            check(f"{tag} bf16 cuDNN (segment mask) vs f32 (<=XLA's)", p_cudnn,
                  1.25 * p_xla + 1e-3)
        except Exception as e:  # report, the auto policy must then avoid cuDNN for masks
            print(f"cuDNN with a dense segment mask: unsupported here ({type(e).__name__}: "
                  f"{str(e)[:200]})", flush=True)
            failures.append("cudnn-mask")

    # Gradients of an MLM-style loss at the initial weights (on the CPU: the XLA half, and
    # layer_norm_vjp with XLA attention in place of cuDNN).
    targets = jnp.asarray(rng.integers(4, V, size=(B, 16)), jnp.int32)
    mpos = jnp.asarray(np.stack([np.sort(rng.choice(np.arange(1, 60), 16, replace=False))
                                 for _ in range(B)]), jnp.int32)

    def loss(p, cfg):
        out = RobertaForPretraining(cfg).apply({"params": p}, ids, kv_lengths=kv,
                                               masked_positions=mpos).mlm_logits
        logp = jax.nn.log_softmax(out.astype(jnp.float32))
        return -(logp * jax.nn.one_hot(targets, logp.shape[-1])).sum(-1).mean()

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    with jax.default_matmul_precision("highest"):
        g_ref = grad(init, base.replace(attention="xla"))  # float32 reference
    flat = lambda g: np.concatenate([np.asarray(x, np.float64).ravel()  # noqa: E731
                                     for x in jax.tree.leaves(g["encoder"]["layers"])])
    err = lambda g: rel(flat(g), flat(g_ref))  # noqa: E731
    g_x = grad(init, base.replace(attention="xla", **bf16))
    if want("reference"):
        check("bf16 XLA vs f32 gradients (encoder layers)", err(g_x), 5e-2)
    else:
        print(f"bf16 XLA vs f32 gradients (encoder layers): rel err {err(g_x):.2e}", flush=True)
    fast = "cudnn" if gpu else "xla"  # the attention the training default takes
    g_c = g_x
    if gpu and (want("cudnn") or want("switches") or want("norm")):
        g_c = grad(init, base.replace(attention="cudnn", **bf16))
        check("bf16 cuDNN vs f32 gradients (encoder layers)", err(g_c), 5e-2)
        check("bf16 cuDNN vs bf16 XLA gradients (encoder layers)", rel(flat(g_c), flat(g_x)),
              5e-2)
    if want("switches"):
        g_ln = grad(init, base.replace(attention=fast, layer_norm_vjp=True, **bf16))
        check(f"bf16 {fast} + layer_norm_vjp vs f32 gradients (<=without)", err(g_ln),
              1.25 * err(g_c) + 1e-3)
        g_fold = grad(init, base.replace(attention=fast, fold_attention_biases=True, **bf16))
        check(f"bf16 {fast} + fold_attention_biases vs f32 gradients (<=without)", err(g_fold),
              1.25 * err(g_c) + 1e-3)
        g_core = grad(init, base.replace(attention="xla", attention_vjp=True, **bf16))
        check("bf16 XLA + attention_vjp vs f32 gradients (<=without)", err(g_core),
              1.25 * err(g_x) + 1e-3)
    if want("norm"):
        name = f"bf16 {fast} + fused_norm vs f32 gradients (<=without)"
        guarded(name, lambda: check(name, err(grad(init, base.replace(
            attention=fast, fused_norm=True, **bf16))), 1.25 * err(g_c) + 1e-3))
        guarded("fused_norm dropout 0.1 (kernel alone)", lambda: fused_norm_dropout_checks(
            B, L, base.hidden_size))
    if want("pallas"):
        name = "bf16 pallas vs f32 gradients (<=XLA's)"
        guarded(name, lambda: check(name, err(grad(init, base.replace(attention="pallas",
                                                                      **bf16))),
                                    1.25 * err(g_x) + 1e-3))
        guarded("pallas attention dropout 0.1 (kernel alone)", lambda: flash_dropout_checks(
            B, L, base.num_heads, base.hidden_size // base.num_heads, kv))
    if gpu:
        # Which kernel really ran: the cuDNN path must compile to cuDNN's fused attention call,
        # the pallas path to the three Triton kernels.
        def kernels(impl):
            hlo = jax.jit(loss, static_argnums=1).lower(
                init, base.replace(attention=impl, **bf16)).compile().as_text()
            triton = sum("flash_attention_" in line for line in hlo.splitlines()
                         if "custom-call(" in line)
            print(f"compiled {impl:<6} path: cuDNN fused attention calls: "
                  f"{hlo.count('__cudnn$fmha')}, robertax Triton attention kernels: {triton}",
                  flush=True)
        impls = ("xla", "cudnn") * want("cudnn") + ("pallas",) * want("pallas")
        for impl in impls:
            guarded(f"compile the {impl} path", lambda: kernels(impl))
    else:
        print("cuDNN checks skipped: no GPU", flush=True)
    print("correctness:", "ALL PASS" if not failures else f"FAILED {failures}", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
