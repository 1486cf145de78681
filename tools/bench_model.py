"""Forward + backward time of robertax (jit) against transformers' PyTorch RoBERTa on this CPU.

Same config, same weights (converted from the PyTorch model), same batch, same computation; the
two are run interleaved, in rounds: each round runs `--settle` untimed steps of robertax, one
timed step, then the same for PyTorch, so every timed step follows a step of its own framework
(as in training) while drift in the machine's speed reaches both. The median of each is
reported with the median ratio (robertax / PyTorch; below 1.0 means robertax is faster). Both
compute the MLM loss on the same 15% of positions: with `--head=full` (default) from
full-vocabulary logits at every position (what transformers' RobertaForMaskedLM does), with
`--head=masked` the head runs on the masked positions only in both (what robertax's train step
does; on the PyTorch side the encoder's output is indexed before `lm_head`).
`--dtype=bfloat16`: robertax computes in bf16 (float32 parameters), PyTorch under
`torch.autocast("cpu", bfloat16)`.

    python tools/bench_model.py                       # roberta-base shape, batch 8 x 128
    python tools/bench_model.py --head=masked --dtype=bfloat16
    python tools/bench_model.py --layers=2 --hidden=128 --heads=4 --batch=8 --length=64
    python tools/bench_model.py --profile_dir=/tmp/prof   # + where robertax's step spends time
    python tools/bench_model.py --gemms    # the step's matrix products alone, XLA vs PyTorch
    python tools/bench_model.py --per_layer   # robertax with one parameter set per layer
    python tools/bench_model.py --cpu_matmul=mkl  # robertax's products through Intel MKL
    eval "$(bash tools/cpu_env.sh)"; python tools/bench_model.py   # both under jemalloc

`--per_layer` measures what storing the layers' parameters stacked costs: the same layers and
weights, unstacked into one set per layer (as PyTorch holds them), so the step neither slices
the stacked weights nor concatenates their gradients. It is an experiment of this tool, not a
model option (the model's parameter layout is stacked).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from robertax import convert  # noqa: E402
from robertax import model as M  # noqa: E402


class _PerLayerEncoder(M.Encoder):
    """The encoder with one parameter set per layer ("layer_{i}") instead of stacked ones."""

    def setup(self):
        c = self.config
        self.embed = M.Embeddings(c, self.deterministic)
        blocks = [M.Layer(c, self.deterministic, name=f"layer_{i}") for i in range(c.num_layers)]

        def layers(x, amask):
            for block in blocks:
                x, _ = block(x, amask)
            return x, None
        self.layers = layers


class _PerLayerForMaskedLM(nn.Module):
    """RobertaForMaskedLM over _PerLayerEncoder: the same computation."""
    config: M.RobertaConfig

    @nn.compact
    def __call__(self, input_ids, *, masked_positions=None):
        c = self.config
        encoder = _PerLayerEncoder(c, True, name="encoder")
        x = encoder(input_ids)
        h = x if masked_positions is None else M.gather_positions(x, masked_positions)
        return M.MaskedLMHead(c, name="mlm_head")(h, encoder)[..., :c.vocab_size]


def unstack_layers(params: dict, num_layers: int) -> dict:
    """robertax params -> _PerLayerForMaskedLM's: encoder/layers[i] becomes encoder/layer_{i}."""
    encoder = {k: v for k, v in params["encoder"].items() if k != "layers"}
    for i in range(num_layers):
        encoder[f"layer_{i}"] = jax.tree.map(lambda a, i=i: a[i], params["encoder"]["layers"])
    return {**params, "encoder": encoder}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--vocab", type=int, default=50265)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--settle", type=int, default=1,
                   help="untimed steps of the same framework before each timed one (0: strictly "
                        "alternating steps)")
    p.add_argument("--profile_dir", default=None,
                   help="also trace 2 robertax steps here and print the ops' time table")
    p.add_argument("--scan_unroll", type=int, default=0,
                   help="layers per iteration of the layer scan (0: all, the loop unrolled)")
    p.add_argument("--head", choices=("full", "masked"), default="full",
                   help="vocabulary projection at every position, or at the masked ones only")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--gemms", action="store_true",
                   help="only time the step's matrix-product shapes, XLA against PyTorch")
    p.add_argument("--per_layer", action="store_true",
                   help="robertax with one parameter set per layer instead of stacked ones")
    p.add_argument("--cpu_matmul", choices=("xla", "mkl"), default="xla",
                   help="robertax's model.cpu_matmul: products through XLA:CPU or Intel MKL")
    p.add_argument("--fold_attention_biases", action="store_true",
                   help="robertax's model.fold_attention_biases (no key/value bias additions)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.gemms:
        return gemms(a)
    if a.per_layer and a.scan_unroll:
        p.error("--per_layer runs the layers unrolled; it takes no --scan_unroll")

    hf_cfg = transformers.RobertaConfig(
        vocab_size=a.vocab, hidden_size=a.hidden, num_hidden_layers=a.layers,
        num_attention_heads=a.heads, intermediate_size=4 * a.hidden,
        max_position_embeddings=a.length + 2, type_vocab_size=1, pad_token_id=1,
        layer_norm_eps=1e-5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        attn_implementation="sdpa")
    torch.manual_seed(0)
    hf = transformers.RobertaForMaskedLM(hf_cfg).train()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        config, params = convert.from_hf(d, dropout_rate=0.0, attention_dropout_rate=0.0)
    bf16 = a.dtype == "bfloat16"
    config = config.replace(scan_unroll=a.scan_unroll, dtype=jnp.dtype(a.dtype),
                            cpu_matmul=a.cpu_matmul,
                            fold_attention_biases=a.fold_attention_biases)
    module = (_PerLayerForMaskedLM if a.per_layer else M.RobertaForMaskedLM)(config)
    if a.per_layer:
        params = unstack_layers(params, config.num_layers)

    rng = np.random.default_rng(0)
    ids = rng.integers(4, a.vocab, size=(a.batch, a.length))
    ids[:, 0], ids[:, -1] = 0, 2
    P = max(1, round(0.15 * a.length))  # masked positions per row, as the pipeline picks them
    pos = np.sort(np.stack([rng.choice(np.arange(1, a.length - 1), P, replace=False)
                            for _ in range(a.batch)]), axis=1)  # [B, P]
    targets = np.take_along_axis(ids, pos, axis=1)  # [B, P]
    labels = np.full_like(ids, -100)
    np.put_along_axis(labels, pos, targets, axis=1)
    weights = jnp.asarray(labels >= 0, jnp.float32)

    def jax_loss(p, x, y, positions):  # y: labels [B, L], or with --head=masked targets [B, P]
        if a.head == "masked":
            logits = module.apply({"params": p}, x, masked_positions=positions)  # [B, P, V]
            w = jnp.ones(positions.shape)
        else:
            logits, w = module.apply({"params": p}, x), weights  # [B, L, V]
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))  # the nll as robertax.step has it
        nll = -(logp * jax.nn.one_hot(jnp.maximum(y, 0), logp.shape[-1])).sum(-1)
        return (nll * w).sum() / w.sum()

    jax_step = jax.jit(jax.value_and_grad(jax_loss))
    params = jax.device_put(params)  # on the device once, as in training (not copied every call)
    y = targets if a.head == "masked" else labels
    jx, jy, jpos = jnp.asarray(ids), jnp.asarray(y), jnp.asarray(pos)
    tx, ty, tpos = torch.tensor(ids), torch.tensor(y), torch.tensor(pos)
    rows = torch.arange(a.batch)[:, None]

    def torch_loss():
        if a.head == "full":
            return hf(tx, labels=ty).loss
        h = hf.roberta(tx).last_hidden_state[rows, tpos]  # [B, P, D]
        logits = hf.lm_head(h)
        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ty.flatten())

    def run_jax():
        t = time.perf_counter()
        loss, grads = jax_step(params, jx, jy, jpos)
        jax.block_until_ready(grads)
        return time.perf_counter() - t, float(loss)

    def run_torch():
        t = time.perf_counter()
        hf.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch_loss()
        loss.backward()
        return time.perf_counter() - t, loss.item()

    (_, l1), (_, l2) = run_jax(), run_torch()  # compile / warm up
    print(f"loss robertax {l1:.6f}  transformers {l2:.6f}  (same weights and batch)")
    tj, tt = [], []
    for _ in range(a.reps):
        for _ in range(a.settle):
            run_jax()
        tj.append(run_jax()[0])
        for _ in range(a.settle):
            run_torch()
        tt.append(run_torch()[0])
    ratios = [x / y for x, y in zip(tj, tt)]
    mj, mt = statistics.median(tj), statistics.median(tt)
    tokens = a.batch * a.length
    print(f"config: layers {a.layers}, hidden {a.hidden}, heads {a.heads}, vocab {a.vocab}, "
          f"batch {a.batch} x {a.length}, {a.dtype}, head {a.head}, {a.threads} CPU threads, "
          f"{a.reps} interleaved reps{', per-layer parameters' if a.per_layer else ''}, "
          f"cpu_matmul {a.cpu_matmul}, settle {a.settle}"
          f"{', fold_attention_biases' if a.fold_attention_biases else ''}; " + ", ".join(
              f"{k}={os.environ.get(k, '')!r}"
              for k in ("GLIBC_TUNABLES", "LD_PRELOAD", "MALLOC_CONF")))
    print(f"robertax (jax {jax.__version__}):        median {mj * 1e3:8.1f} ms  "
          f"({tokens / mj:,.0f} tokens/s)")
    print(f"transformers (torch {torch.__version__}): median {mt * 1e3:8.1f} ms  "
          f"({tokens / mt:,.0f} tokens/s)")
    print(f"median ratio robertax / pytorch: {statistics.median(ratios):.3f}")
    if a.profile_dir:
        import profile_summary
        with jax.profiler.trace(a.profile_dir, create_perfetto_trace=True):
            for _ in range(2):
                run_jax()
        print(profile_summary.table(a.profile_dir, steps=2))


def _median_time(f, reps):
    f()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def gemms(a):
    """Each [M, K] x [K, N] product shape of the step with both operands stored as given (NN),
    the second stored transposed (NT, as input gradients use a weight) or the first stored
    transposed (TN, as weight gradients use activations), as `jnp.dot` under jit, through
    robertax's MKL custom call when it is available here (`robertax.mkl_gemm`) and as
    `torch.matmul`, in float32 and in bf16 (XLA, MKL: bf16 operands, float32 accumulation)."""
    from robertax import mkl_gemm

    mkl, why = mkl_gemm.available()
    if not mkl:
        print(f"MKL columns left out: {why}")
    T, D, F, V = a.batch * a.length, a.hidden, 4 * a.hidden, a.vocab
    shapes = [("qkvo", T, D, D), ("up", T, D, F), ("down", T, F, D), ("vocab", T, D, V)]
    rng = np.random.default_rng(0)
    print(f"matrix products of the step (T = {a.batch} x {a.length} tokens), GFLOP/s, "
          f"median of {a.reps}; {a.threads} threads")
    print(f"{'':6} {'M x K x N':>18} {'form':>4} | {'XLA f32':>8} {'MKL f32':>8} "
          f"{'torch f32':>9} | {'XLA bf16':>8} {'MKL bf16':>8} {'torch bf16':>10}")
    for name, rows, K, N in shapes:  # rows: M of the [M, K] x [K, N] product
        for form in ("NN", "NT", "TN"):
            # operands as the form stores them: NT multiplies by a [N, K] matrix transposed,
            # TN by a [K, M] one (both as in the backward)
            xa = rng.normal(size=(rows, K) if form != "TN" else (K, rows)).astype(np.float32)
            xb = rng.normal(size=(K, N) if form != "NT" else (N, K)).astype(np.float32)
            fa = (lambda x: x.T) if form == "TN" else (lambda x: x)
            fb = (lambda x: x.T) if form == "NT" else (lambda x: x)
            f = jax.jit(lambda p, q: jnp.dot(fa(p), fb(q), preferred_element_type=jnp.float32))
            g = jax.jit(lambda p, q: mkl_gemm.gemm(p, q, form == "TN", form == "NT"))
            row = []
            for dt, tdt in ((jnp.float32, torch.float32), (jnp.bfloat16, torch.bfloat16)):
                ja, jb = jnp.asarray(xa, dt), jnp.asarray(xb, dt)
                ta, tb = torch.tensor(xa, dtype=tdt), torch.tensor(xb, dtype=tdt)
                tj = _median_time(lambda: f(ja, jb).block_until_ready(), a.reps)
                tm = (_median_time(lambda: g(ja, jb).block_until_ready(), a.reps) if mkl
                      else float("nan"))
                tt = _median_time(lambda: torch.matmul(fa(ta), fb(tb)), a.reps)
                row += [2 * rows * K * N / t / 1e9 for t in (tj, tm, tt)]
            print(f"{name:6} {f'{rows} x {K} x {N}':>18} {form:>4} | {row[0]:8.0f} {row[1]:8.0f} "
                  f"{row[2]:9.0f} | {row[3]:8.0f} {row[4]:8.0f} {row[5]:10.0f}")


if __name__ == "__main__":
    main()
