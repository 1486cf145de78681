"""Does a pretrained model use its context? Held-out MLM loss split by what the model was shown.

    python tools/mlm_probe.py /tmp/robertax_tiny [--batches=16]

On the validation split of the run's corpus (the pipeline's own masking), reports the MLM loss
at the positions shown as <mask>, as a random token and as the original token (BERT's 80/10/10),
next to two baselines on the same <mask> positions: the training corpus's unigram distribution
(add-one smoothed), and the model itself with every unmasked context token replaced by a random
one. A model on the early MLM plateau predicts the unigram distribution at <mask> and only
copies the kept tokens: its <mask> loss equals the unigram loss and its overall loss still falls,
from the 10% kept positions alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def unigram_logprobs(shard_dir: str, vocab_size: int) -> np.ndarray:
    """log p(token) over the training split, add-one smoothed over the vocabulary."""
    from robertax.data import pipeline, shards
    corpus = shards.ShardedCorpus(shard_dir, "train")
    n = corpus.index.num_sentences
    read = pipeline.SentenceReader(corpus.paths, corpus.dtype, n)
    counts = np.zeros(vocab_size, np.int64)
    for start in range(0, n, 65536):
        counts += np.bincount(np.concatenate(read(start, min(n, start + 65536))),
                              minlength=vocab_size)
    return np.log((counts + 1) / (counts + 1).sum())


def random_context(ids: np.ndarray, predicted: np.ndarray, ordinary: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """`ids` with every visible ordinary token (not special, not a predicted position) replaced
    by a uniformly drawn ordinary token; special tokens and predicted positions are kept."""
    out = ids.copy()
    context = np.isin(ids, ordinary) & ~predicted
    out[context] = rng.choice(ordinary, context.sum())
    return out


def probe(workdir: str, batches: int = 16, seed: int = 0) -> dict:
    import jax
    import jax.numpy as jnp
    from ml_collections import ConfigDict

    from robertax import checkpoint
    from robertax.data import inspect, pipeline, shards
    from robertax.model import RobertaForPretraining

    with open(os.path.join(workdir, "config.json")) as f:
        config = ConfigDict(json.load(f))
    if config.data.format != "full_sentences":
        raise SystemExit(f"{workdir}: the probe reads full_sentences runs, not {config.data.format}")
    mc, params, _ = checkpoint.load_model(workdir)
    model = RobertaForPretraining(mc)
    shard_dir = pipeline.resolve_shard_dir(config)
    special = shards.read_manifest(shard_dir)["special_ids"]
    mask_id = special["mask"]
    ordinary = np.setdiff1d(np.arange(mc.vocab_size), list(special.values()))
    unigram = unigram_logprobs(shard_dir, mc.vocab_size)

    @jax.jit
    def logprobs(ids, positions, position_ids, lengths):
        out = model.apply({"params": params}, ids, deterministic=True, position_ids=position_ids,
                          kv_lengths=lengths, masked_positions=positions)
        return jax.nn.log_softmax(out.mlm_logits.astype(jnp.float32))

    rng = np.random.default_rng(seed)
    nll = {k: [] for k in ("mask", "random", "kept", "unigram@mask", "random_context@mask")}
    for _, b in inspect.collect(config, shard_dir, batches, 1, split="valid"):
        pos, tgt, real = b["mlm_positions"], b["mlm_targets"], b["mlm_weights"] > 0
        lengths = (b["segment_ids"] != 0).sum(-1).astype(np.int32)
        shown = np.take_along_axis(b["input_ids"], pos, 1)
        kinds = {"mask": real & (shown == mask_id), "kept": real & (shown == tgt)}
        kinds["random"] = real & ~kinds["mask"] & ~kinds["kept"]
        lp = np.asarray(logprobs(b["input_ids"], pos, b["position_ids"], lengths))
        tok_nll = -np.take_along_axis(lp, tgt[..., None], -1)[..., 0]
        for k, sel in kinds.items():
            nll[k] += tok_nll[sel].tolist()
        nll["unigram@mask"] += (-unigram[tgt[kinds["mask"]]]).tolist()
        # Context ablation: every visible ordinary token becomes a random one.
        ids = random_context(b["input_ids"], inspect.mlm_mask(b), ordinary, rng)
        lp = np.asarray(logprobs(ids, pos, b["position_ids"], lengths))
        tok_nll = -np.take_along_axis(lp, tgt[..., None], -1)[..., 0]
        nll["random_context@mask"] += tok_nll[kinds["mask"]].tolist()
    out = {k: {"loss": float(np.mean(v)) if v else float("nan"), "count": len(v)}
           for k, v in nll.items()}
    allv = nll["mask"] + nll["random"] + nll["kept"]
    out["all"] = {"loss": float(np.mean(allv)), "count": len(allv)}
    out["context_gain_nats"] = out["unigram@mask"]["loss"] - out["mask"]["loss"]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workdir", help="a robertax.train workdir (config.json and checkpoints/)")
    p.add_argument("--batches", type=int, default=16, help="validation batches to score")
    args = p.parse_args(argv)
    r = probe(args.workdir, args.batches)
    names = {"all": "all predicted positions", "mask": "shown <mask> (80%)",
             "random": "shown a random token (10%)", "kept": "shown the original token (10%)",
             "unigram@mask": "unigram baseline at the <mask> positions",
             "random_context@mask": "model, context replaced by random tokens, at <mask>"}
    for k, name in names.items():
        print(f"{name:<54} {r[k]['loss']:7.3f} nats  ({r[k]['count']} tokens)")
    print(f"context gain at <mask> over the unigram baseline: {r['context_gain_nats']:.3f} nats")
    return r


if __name__ == "__main__":
    main()
