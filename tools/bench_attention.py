"""Attention alone, forward + backward: robertax's fused kernel against cuDNN and XLA.

Times one layer's attention core (q, k, v -> output, then the gradients of q, k and v) for
the model's shapes (base: 12 heads of 64; `--heads`, `--head_dim`), in bf16, jitted, the median
of `--reps` calls after a warm-up:

- `xla-drop`: softmax and the same hashed dropout mask in XLA operations
  (`flash_attention.reference`): what the paper's recipe costs without a fused kernel;
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")`, no dropout (GPU only);
- `pallas`, `pallas-drop`: `flash_attention.attention` without and with dropout 0.1; also at
  the block sizes and launch settings given by `--pallas_configs`
  (BLOCK_Q x BLOCK_K / BLOCK_BWD / warps / stages).

TFLOP/s counts the products as cuDNN's convention does: 4·B·N·L·S·K forward, 2.5x that
backward (the recomputed logits included), 14·B·N·L·S·K in all. That is how
tools/hlo_cost.py rates attention (266 TFLOP/s for cuDNN, from the 2026-11-26 profile).
Comparing `pallas` with `pallas-drop` shows what the hashed mask costs.

    python tools/bench_attention.py                     # on a GPU: base's shapes, batch 16
    python tools/bench_attention.py --pallas_configs=128x64/64/4/2,64x64/64/4/3,128x128/64/8/2
    python tools/bench_attention.py --batch=2 --length=128 --heads=2 --reps=2   # CPU rehearsal

On the CPU the kernel runs in Pallas's interpreter: the numbers check the tool, not the speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from robertax import flash_attention as fa  # noqa: E402


def parse_config(text: str) -> dict:
    """'128x64/64/4/2' -> the module settings it names."""
    try:
        blocks, bwd, warps, stages = text.split("/")
        bq, bk = blocks.split("x")
        out = dict(BLOCK_Q=int(bq), BLOCK_K=int(bk), BLOCK_BWD=int(bwd), NUM_WARPS=int(warps),
                   NUM_STAGES=int(stages))
    except ValueError:
        raise SystemExit(f"--pallas_configs: {text!r} is not BLOCK_QxBLOCK_K/BLOCK_BWD/"
                         f"WARPS/STAGES, e.g. 128x64/64/4/2")
    for key in ("BLOCK_Q", "BLOCK_K", "BLOCK_BWD"):  # lengths are padded to whole blocks
        if out[key] < 16 or out[key] & (out[key] - 1):
            raise SystemExit(f"--pallas_configs: {text!r}: {key} {out[key]} is not a power of "
                             f"two of at least 16")
    return out


def timed(fn, args, reps: int) -> float:
    """Median seconds of one call (after one untimed call, which compiles)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def step(attn):
    """jit(forward + the gradients of q, k, v) of a fixed linear loss."""
    def loss(q, k, v, w):
        return (attn(q, k, v).astype(jnp.float32) * w).sum()
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head_dim", type=int, default=64)
    ap.add_argument("--rate", type=float, default=0.1)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--pallas_configs", default="",
                    help="comma-separated BLOCK_QxBLOCK_K/BLOCK_BWD/WARPS/STAGES to time too")
    ap.add_argument("--json_out", default=None, help="append one JSON line per row here")
    args = ap.parse_args(argv)
    B, L, N, K = args.batch, args.length, args.heads, args.head_dim
    ks = jax.random.split(jax.random.key(0), 4)
    q, k, v, w = (jax.random.normal(x, (B, L, N, K), jnp.float32) for x in ks)
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    seed = jnp.array([2019, 7], jnp.uint32)
    gpu = jax.default_backend() == "gpu"
    rows = [("xla-drop", lambda: step(lambda q, k, v: fa.reference(q, k, v, None, seed,
                                                                   args.rate)))]
    if gpu:
        rows.append(("cudnn", lambda: step(lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, implementation="cudnn"))))
    default = {name: getattr(fa, name) for name in ("BLOCK_Q", "BLOCK_K", "BLOCK_BWD",
                                                    "NUM_WARPS", "NUM_STAGES")}
    settings = [("", default)] + [(c, parse_config(c)) for c in
                                  filter(None, args.pallas_configs.split(","))]
    for text, setting in settings:
        for rate in (0.0, args.rate):
            name = ("pallas-drop" if rate else "pallas") + (f" {text}" if text else "")
            rows.append((name, lambda rate=rate: step(
                lambda q, k, v: fa.attention(q, k, v, None, seed, rate)), setting))
    flops = 14.0 * B * N * L * L * K
    print(f"attention fwd+bwd, B={B} L={L} N={N} K={K}, bf16, {jax.devices()[0].device_kind}")
    print(f"{'path':<32}{'ms':>9}{'TFLOP/s':>10}")
    for name, make, *setting in rows:
        for key, value in (setting[0] if setting else default).items():
            setattr(fa, key, value)
        try:
            s = timed(make(), (q, k, v, w), args.reps)
        except Exception as e:  # a setting Triton cannot compile: report it and go on
            print(f"{name:<32} failed: {type(e).__name__}: {str(e)[:160]}")
            continue
        finally:
            for key, value in default.items():
                setattr(fa, key, value)
        print(f"{name:<32}{1e3 * s:>9.3f}{flops / s / 1e12:>10.1f}", flush=True)
        if args.json_out:
            with open(args.json_out, "a") as f:
                f.write(json.dumps({"path": name, "batch": B, "length": L, "heads": N,
                                    "head_dim": K, "ms": 1e3 * s, "tflops": flops / s / 1e12,
                                    "device": jax.devices()[0].device_kind}) + "\n")


if __name__ == "__main__":
    main()
