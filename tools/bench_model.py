"""Forward + backward time of robertax (jit) against transformers' PyTorch RoBERTa on this CPU.

Same config, same weights (converted from the PyTorch model), same batch; the two are run
interleaved and the median of each is reported with the median ratio (robertax / PyTorch; below
1.0 means robertax is faster). Both compute full-vocabulary logits and the MLM loss on 15% of
positions, in float32.

    python tools/bench_model.py                       # roberta-base shape, batch 8 x 128
    python tools/bench_model.py --layers=2 --hidden=128 --heads=4 --batch=8 --length=64
    python tools/bench_model.py --profile_dir=/tmp/prof   # + where robertax's step spends time
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from robertax import convert  # noqa: E402
from robertax.model import RobertaForMaskedLM  # noqa: E402


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
    p.add_argument("--profile_dir", default=None,
                   help="also trace 2 robertax steps here and print the ops' time table")
    p.add_argument("--scan_unroll", type=int, default=0,
                   help="layers per iteration of the layer scan (0: all, the loop unrolled)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)

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
    module = RobertaForMaskedLM(config.replace(scan_unroll=a.scan_unroll))

    rng = np.random.default_rng(0)
    ids = rng.integers(4, a.vocab, size=(a.batch, a.length))
    ids[:, 0], ids[:, -1] = 0, 2
    labels = np.full_like(ids, -100)
    chosen = rng.random(ids.shape) < 0.15
    labels[chosen] = ids[chosen]
    weights = jnp.asarray(chosen, jnp.float32)

    def jax_loss(p, x, y):
        logits = module.apply({"params": p}, x)  # [B, L, V]
        logp = jax.nn.log_softmax(logits)  # the nll as robertax.step computes it (one-hot)
        nll = -(logp * jax.nn.one_hot(jnp.maximum(y, 0), logp.shape[-1])).sum(-1)
        return (nll * weights).sum() / weights.sum()

    jax_step = jax.jit(jax.value_and_grad(jax_loss))
    jx, jy = jnp.asarray(ids), jnp.asarray(labels)
    tx, ty = torch.tensor(ids), torch.tensor(labels)

    def run_jax():
        t = time.perf_counter()
        loss, grads = jax_step(params, jx, jy)
        jax.block_until_ready(grads)
        return time.perf_counter() - t, float(loss)

    def run_torch():
        t = time.perf_counter()
        hf.zero_grad(set_to_none=True)
        loss = hf(tx, labels=ty).loss
        loss.backward()
        return time.perf_counter() - t, float(loss)

    (_, l1), (_, l2) = run_jax(), run_torch()  # compile / warm up
    print(f"loss robertax {l1:.6f}  transformers {l2:.6f}  (same weights and batch)")
    tj, tt = [], []
    for _ in range(a.reps):
        tj.append(run_jax()[0])
        tt.append(run_torch()[0])
    ratios = [x / y for x, y in zip(tj, tt)]
    mj, mt = statistics.median(tj), statistics.median(tt)
    tokens = a.batch * a.length
    print(f"config: layers {a.layers}, hidden {a.hidden}, heads {a.heads}, vocab {a.vocab}, "
          f"batch {a.batch} x {a.length}, float32, {a.threads} CPU threads, {a.reps} interleaved reps")
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


if __name__ == "__main__":
    main()
