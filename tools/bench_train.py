"""Train-step throughput of robertax, optionally next to transformers' RobertaForMaskedLM.

Times the real jitted pretraining step (robertax.step: MLM on gathered masked positions, AdamW,
gradient accumulation if configured) on synthetic FULL-SENTENCES batches, and reports
sequences/s, tokens/s, TFLOP/s, MFU (with the FLOP formula's terms) and peak device memory.
With --compare_torch it also times transformers' PyTorch RobertaForMaskedLM training step
(full-vocabulary head, as transformers computes it; bf16 autocast, SDPA attention, fused AdamW,
torch.compile on GPU) on the same device and batch.

    # CPU (this machine): a small config, float32
    python tools/bench_train.py --config=configs/tiny.py --compare_torch
    # one GPU: RoBERTa-base, bf16, cuDNN flash attention (no attention dropout)
    python tools/bench_train.py --config=configs/base.py --config.batch_size=128 \
        --config.microbatches=1 --config.model.attention_dropout_rate=0 --compare_torch
    # the dropout generators against each other, alternating in one process
    python tools/bench_train.py --config=configs/base.py --config.batch_size=8 \
        --config.data.max_length=128 --config.precision=bfloat16 --steps=9 \
        --alternate_dropout_rngs=hash,rbg
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from robertax import perf, sharding, train  # noqa: E402
from robertax.model import attention_implementation  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Model/training config.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_COMPARE = flags.DEFINE_bool("compare_torch", False, "Also time transformers (PyTorch).")
_TORCH_COMPILE = flags.DEFINE_bool("torch_compile", None, "torch.compile (default: on GPU).")
_SKIP_JAX = flags.DEFINE_bool("skip_jax", False, "Only time the PyTorch baseline.")
_JSON = flags.DEFINE_string("json_out", None, "Append one JSON line per result here.")
_LABEL = flags.DEFINE_string("label", "", "A name for this configuration in the output.")
_PROFILE = flags.DEFINE_string("profile_dir", None, "Trace --profile_steps robertax steps here "
                               "(jax.profiler) and print the ops' time table.")
_PROFILE_STEPS = flags.DEFINE_integer("profile_steps", 3, "Steps traced with --profile_dir.")
_ALT_RNG = flags.DEFINE_list("alternate_dropout_rngs", [], "After the timing, also time these "
                              "dropout generators (config.dropout_rng values) against the "
                              "config's own, alternating in this process for --steps rounds.")
_HLO = flags.DEFINE_string("hlo_out", None, "Write the compiled step's HLO text here (to map a "
                           "profile's fusion names to the model's ops).")


def synthetic_batch(B, L, P, V, seed=0):
    """Full rows (FULL-SENTENCES has no padding), 15% of positions masked (exact count)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, V, size=(B, L)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 0, 2
    n = min(P, round(0.15 * (L - 2)))
    pos = np.zeros((B, P), np.int32)
    w = np.zeros((B, P), np.float32)
    for b in range(B):
        pos[b, :n] = np.sort(rng.choice(np.arange(1, L - 1), n, replace=False))
        w[b, :n] = 1.0
    return {"input_ids": ids, "segment_ids": np.ones((B, L), np.int32),
            "position_ids": np.broadcast_to(np.arange(L, dtype=np.int32) + 2, (B, L)).copy(),
            "mlm_positions": pos, "mlm_targets": np.take_along_axis(ids, pos, 1),
            "mlm_weights": w}, n


def peak_memory_gb():
    try:
        stats = jax.devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use", 0) / 2**30 or None
    except Exception:  # CPU backends may not report
        return None


def time_jax(config):
    mesh = sharding.make_mesh(config.mesh)
    run = train.build(config, mesh)
    mc, state, p_step = run.model_config, run.state, run.train_step
    L, P = config.data.max_length, config.data.max_predictions
    host, n_masked = synthetic_batch(config.batch_size, L, P, mc.vocab_size)
    batch = sharding.host_batch_to_global(mesh, host)
    drng = train.make_dropout_rng(config)
    t0 = time.perf_counter()  # compile_s: the first call, or the ahead-of-time compile it reuses
    if _HLO.value:
        with open(_HLO.value, "w") as f:
            f.write(p_step.lower(state, batch, drng).compile().as_text())
    state, m = p_step(state, batch, drng)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    for _ in range(_WARMUP.value):
        state, m = p_step(state, batch, drng)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(_STEPS.value):
        state, m = p_step(state, batch, drng)
    jax.block_until_ready(state)
    dt = (time.perf_counter() - t0) / _STEPS.value
    loss = float(m["loss"])
    if _ALT_RNG.value:
        state = alternate_dropout_rngs(p_step, state, batch, config)
    if _PROFILE.value:
        profile(lambda s: p_step(s, batch, drng), state)
    impl = attention_implementation(mc, mc.attention_dropout_rate > 0)
    return {"framework": "robertax", "step_s": dt, "compile_s": compile_s, "loss": loss,
            "attention": impl, "head_positions": P, "masked": n_masked,
            "peak_mem_gb": peak_memory_gb()}


def alternate_dropout_rngs(p_step, state, batch, config):
    """Step times of the same step under several dropout generators, measured in rounds: each
    round runs, per generator, one untimed step and one timed step, so that drift in the
    machine's speed reaches all of them. Prints each one's median and its median ratio to the
    config's generator."""
    names = [config.get("dropout_rng", "threefry")] + list(_ALT_RNG.value)
    keys = {}
    for n in names:
        c = config.copy_and_resolve_references()
        c.dropout_rng = n
        keys[n] = train.make_dropout_rng(c)
    for k in keys.values():  # compile for each key type
        state, m = p_step(state, batch, k)
    jax.block_until_ready(m)
    times = {n: [] for n in keys}
    for _ in range(_STEPS.value):
        for n, k in keys.items():
            state, m = p_step(state, batch, k)
            jax.block_until_ready(m)
            t0 = time.perf_counter()
            state, m = p_step(state, batch, k)
            jax.block_until_ready(m)
            times[n].append(time.perf_counter() - t0)
    for n, ts in times.items():
        ratio = statistics.median(a / b for a, b in zip(ts, times[names[0]]))
        print(f"dropout_rng={n:<10} median {statistics.median(ts):.4f} s a step, "
              f"median ratio to {names[0]} {ratio:.3f} ({len(ts)} rounds)", flush=True)
    return state


def profile(step, state):
    """Traces a few steps and prints where the time goes (tools/profile_summary.py)."""
    import profile_summary
    with jax.profiler.trace(_PROFILE.value, create_perfetto_trace=True):
        for _ in range(_PROFILE_STEPS.value):
            state, m = step(state)
        jax.block_until_ready(m)
    print(profile_summary.table(_PROFILE.value, _PROFILE_STEPS.value), flush=True)
    return state


def time_torch(config):
    import torch
    import transformers
    gpu = torch.cuda.is_available()
    dev = torch.device("cuda" if gpu else "cpu")
    m = config.model
    hf_cfg = transformers.RobertaConfig(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads, intermediate_size=m.intermediate_size,
        max_position_embeddings=m.max_position_embeddings, type_vocab_size=1, pad_token_id=1,
        layer_norm_eps=1e-5, hidden_dropout_prob=m.dropout_rate,
        attention_probs_dropout_prob=m.attention_dropout_rate, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = transformers.RobertaForMaskedLM(hf_cfg).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6,
                            weight_decay=0.01, fused=gpu)
    compile_ = gpu if _TORCH_COMPILE.value is None else _TORCH_COMPILE.value
    fwd = torch.compile(model) if compile_ else model
    L, P = config.data.max_length, config.data.max_predictions
    host, n_masked = synthetic_batch(config.batch_size, L, P, m.vocab_size)
    ids = torch.tensor(host["input_ids"], device=dev, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for b in range(ids.shape[0]):
        pos = torch.tensor(host["mlm_positions"][b, :n_masked], device=dev)
        labels[b, pos] = ids[b, pos]
    half = config.precision in ("bfloat16", "float16")
    dtype = torch.bfloat16 if config.precision == "bfloat16" else torch.float16

    def step():
        with torch.autocast(dev.type, dtype=dtype, enabled=half):
            loss = fwd(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if gpu else (lambda: None)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    loss = step()
    sync()
    compile_s = time.perf_counter() - t0
    for _ in range(_WARMUP.value):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(_STEPS.value):
        loss = step()
    sync()
    dt = (time.perf_counter() - t0) / _STEPS.value
    return {"framework": f"transformers{' +compile' if compile_ else ''}", "step_s": dt,
            "compile_s": compile_s, "loss": float(loss), "attention": "sdpa",
            "head_positions": L, "masked": n_masked,
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if gpu else None}


def report(config, r):
    m = config.model
    B, L = config.batch_size, config.data.max_length
    terms = perf.flops_per_token(m.num_layers, m.hidden_size, L, m.vocab_size,
                                 r["head_positions"] / L, m.intermediate_size)
    tok_s = B * L / r["step_s"]
    peak = perf.device_peak_flops()
    mfu = perf.mfu(tok_s, terms.total, jax.device_count(), peak)
    r.update(label=_LABEL.value, device=jax.devices()[0].device_kind, devices=jax.device_count(),
             layers=m.num_layers, hidden=m.hidden_size, batch=B, length=L,
             precision=config.precision, attention_dropout=m.attention_dropout_rate,
             dropout=m.dropout_rate, dropout_rng=config.get("dropout_rng", "threefry"),
             seq_per_s=B / r["step_s"], tokens_per_s=tok_s, tflops=tok_s * terms.total / 1e12,
             mfu=mfu, flops_per_token={"layers": terms.layers, "attention": terms.attention,
                                       "head": terms.head, "total": terms.total})
    print(f"{r['label'] or '-':<14} {r['framework']:<22} {r['attention']:<6} "
          f"B={B:<4} L={L:<4} {B / r['step_s']:9.1f} seq/s {tok_s:11,.0f} tok/s "
          f"{r['tflops']:7.1f} TFLOP/s  MFU {'%5.1f%%' % (100 * mfu) if mfu else '   n/a'}  "
          f"mem {'%.1f GB' % r['peak_mem_gb'] if r['peak_mem_gb'] else 'n/a'}  "
          f"compile {r['compile_s']:.0f}s  loss {r['loss']:.3f}", flush=True)
    print(f"   FLOPs/token = 72LH^2 {terms.layers:.3e} + 12LHT {terms.attention:.3e} + "
          f"6f(H^2+HV) {terms.head:.3e} (f={r['head_positions'] / L:.3f}) = {terms.total:.3e}",
          flush=True)
    if _JSON.value:
        with open(_JSON.value, "a") as f:
            f.write(json.dumps(r) + "\n")


def main(argv):
    del argv
    config = _CONFIG.value
    if not _SKIP_JAX.value:
        report(config, time_jax(config))
    if _COMPARE.value:
        report(config, time_torch(config))


if __name__ == "__main__":
    app.run(main)
