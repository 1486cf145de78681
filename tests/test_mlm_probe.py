"""tools/mlm_probe.py: the held-out MLM loss split by what each predicted position was shown
(<mask> / random / original) partitions the predictions in BERT's 80/10/10 proportions, its
unigram baseline is the training corpus's smoothed unigram cross-entropy, and its context
ablation replaces exactly the visible ordinary tokens."""

import math
import os
import sys

import numpy as np

from configs import tiny
from robertax.data import pipeline, shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import mlm_probe  # noqa: E402


def test_probe_partitions_predictions_and_scores_the_unigram_baseline(pretrained):
    c = tiny.get_config()  # the run's corpus and vocabulary
    r = mlm_probe.probe(pretrained, batches=4)
    n = r["all"]["count"]
    parts = [r[k]["count"] for k in ("mask", "random", "kept")]
    assert sum(parts) == n > 200
    assert abs(parts[0] / n - 0.8) < 0.08 and abs(parts[1] / n - 0.1) < 0.05
    assert r["random_context@mask"]["count"] == r["unigram@mask"]["count"] == parts[0]
    # The corpus's unigram distribution predicts better than a uniform guess over the vocabulary.
    assert 3.0 < r["unigram@mask"]["loss"] < math.log(c.model.vocab_size)

    # The baseline is the add-one-smoothed unigram of every training token.
    corpus = shards.ShardedCorpus(pipeline.resolve_shard_dir(c), "train")
    tokens = np.concatenate(corpus.sentences(0, corpus.index.num_sentences))
    counts = np.bincount(tokens, minlength=c.model.vocab_size) + 1
    expected = np.log(counts / counts.sum())
    got = mlm_probe.unigram_logprobs(pipeline.resolve_shard_dir(c), c.model.vocab_size)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_random_context_replaces_every_visible_ordinary_token_only():
    rng = np.random.default_rng(0)
    ordinary = np.arange(4, 1000)  # specials 0-3 here; 999 stands for a token never drawn
    ids = np.array([[0, 10, 20, 30, 40, 2, 1, 1], [0, 50, 3, 60, 70, 80, 90, 2]] * 50)
    predicted = np.zeros(ids.shape, bool)
    predicted[:, 2] = True
    out = mlm_probe.random_context(ids, predicted, ordinary, rng)
    special = ~np.isin(ids, ordinary)
    np.testing.assert_array_equal(out[special | predicted], ids[special | predicted])
    changed = out[~special & ~predicted] != ids[~special & ~predicted]
    assert changed.mean() > 0.99 and np.isin(out, ordinary)[~special].all()
