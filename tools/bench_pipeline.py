"""How fast the input pipeline makes masked 512-token rows, and how many CPU cores that means.

    python tools/bench_pipeline.py                       # synthetic RoBERTa-like corpus
    python tools/bench_pipeline.py --shard_dir=DIR --formats=full_sentences,doc_sentences

Measures, per format: rows/s of one process reading in-process (the rate of one Grain worker),
then the end-to-end rate through `make_iterator` with 1 and 2 worker processes. RoBERTa-base
trains at about 1,600 sequences of 512 tokens per second on one H100, so the cores needed to
feed it are 1600 / (rows/s per worker). The synthetic corpus has RoBERTa's vocabulary (50,265,
stored as uint16) and English-like sentences (log-normal, mean ~27 BPE tokens) in documents of
~30 sentences, written as zstd ArrayRecord shards as preprocessing writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import base  # noqa: E402
from robertax.data import formats, pipeline, shards  # noqa: E402

TARGET = 1600  # RoBERTa-base sequences/s on one H100 (the figure)


def synthetic_corpus(directory: str, tokens: int, seed: int = 0, vocab: int = 50265) -> str:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(3.15, 0.55, tokens // 20), 3, 400).astype(np.int64)
    lengths = lengths[:np.searchsorted(np.cumsum(lengths), tokens) + 1]
    doc_sentences = []
    left = len(lengths)
    while left:
        n = min(left, int(rng.integers(2, 60)))
        doc_sentences.append(n)
        left -= n
    # Zipf-like ids so zstd sees realistic redundancy.
    ids = np.minimum(rng.zipf(1.2, int(lengths.sum())) + 4, vocab - 2).astype(np.uint16)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    sents = [ids[bounds[i]:bounds[i + 1]] for i in range(len(lengths))]
    dt = shards.token_dtype(vocab)
    n_shards = 4
    names = [shards.shard_name("train", i, n_shards) for i in range(n_shards)]
    per = -(-len(sents) // n_shards)
    for i, name in enumerate(names):
        shards.write_shard(os.path.join(directory, name), sents[i * per:(i + 1) * per], dt)
    shards.write_index(os.path.join(directory, "train.index.npz"),
                       shards.SplitIndex(np.array(doc_sentences), lengths))
    manifest = {"format_version": shards.FORMAT_VERSION, "token_dtype": dt.name,
                "vocab_size": vocab, "tokenizer": {"fingerprint": "synthetic"},
                "special_ids": {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": vocab - 1},
                "splits": {"train": {"index": "train.index.npz", "shards": names}}}
    with open(os.path.join(directory, shards.MANIFEST), "w") as f:
        json.dump(manifest, f)
    return directory


def _rate(it, batches: int, batch_size: int) -> float:
    next(it)  # warm-up: opens the shards, starts workers
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - t)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shard_dir", default="")
    p.add_argument("--tokens", type=int, default=4_000_000, help="size of the synthetic corpus")
    p.add_argument("--formats", default=",".join(formats.FORMATS))
    p.add_argument("--max_length", type=int, default=512)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--workers", default="1,2", help="worker counts for the end-to-end rate")
    args = p.parse_args()
    from absl import flags
    flags.FLAGS(sys.argv[:1])

    tmp = None
    shard_dir = args.shard_dir
    if not shard_dir:
        tmp = tempfile.TemporaryDirectory()
        t = time.perf_counter()
        shard_dir = synthetic_corpus(tmp.name, args.tokens)
        print(f"synthetic corpus: {args.tokens:,} tokens in {time.perf_counter() - t:.1f} s")
    index = shards.ShardedCorpus(shard_dir, "train").index
    print(f"{shard_dir}: {index.num_documents:,} documents, {index.num_sentences:,} sentences, "
          f"{index.num_tokens:,} tokens (mean sentence {index.num_tokens / index.num_sentences:.1f})")

    print(f"\n{'format':16} {'layout s':>9} {'rows':>7} {'fill':>5} {'rows/s/worker':>14} "
          f"{'cores for ' + str(TARGET) + '/s':>17}  end-to-end rows/s by workers")
    for name in args.formats.split(","):
        d = base.get_config().data
        d.format, d.max_length = name, args.max_length
        d.max_predictions = max(d.max_predictions, int(0.15 * args.max_length) + 2)
        t = time.perf_counter()
        fmt = formats.make_format(name, index.sentence_lengths, index.doc_offsets(),
                                  args.max_length, 0, 2)
        layout_s = time.perf_counter() - t
        kw = dict(batch_size=args.batch_size, seed=0)
        ds = pipeline.make_dataset(d, shard_dir, "train", **kw)
        fill = np.mean([(ds[i]["original_ids"] != 1).mean() for i in range(3)])
        import grain
        one = _rate(iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0))),
                    args.batches, args.batch_size)
        e2e = []
        for w in [int(x) for x in args.workers.split(",") if x]:
            it = pipeline.make_iterator(d, shard_dir, "train", num_workers=w, **kw)
            e2e.append(f"{w}: {_rate(it, args.batches * max(w, 1), args.batch_size):,.0f}")
            del it
        print(f"{name:16} {layout_s:9.2f} {len(fmt):7,} {fill:5.2f} {one:14,.0f} "
              f"{TARGET / one:17.2f}  {', '.join(e2e)}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
