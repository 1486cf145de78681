"""The Grain input pipeline (robertax.data.pipeline / formats / inspect) on a synthetic corpus."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from configs import base, tiny
from robertax.data import formats, masking, pipeline, shards

BOS, PAD, EOS, MASK = 0, 1, 2, 4
V = 1000
FP = "fingerprint-of-the-test-tokenizer"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """~65k tokens: 120 documents of 1-29 sentences of 3-59 tokens, a few of 130-300."""
    d = str(tmp_path_factory.mktemp("corpus"))
    rng = np.random.default_rng(0)
    docs = []
    for _ in range(120):
        docs.append([rng.integers(5, V, int(rng.integers(130, 300)) if rng.random() < 0.02
                                  else int(rng.integers(3, 60))).astype(np.int32)
                     for _ in range(int(rng.integers(1, 30)))])
    sents = [s for doc in docs for s in doc]
    dt = shards.token_dtype(V)
    names = [shards.shard_name("train", i, 2) for i in range(2)]
    half = len(sents) // 2
    shards.write_shard(os.path.join(d, names[0]), sents[:half], dt)
    shards.write_shard(os.path.join(d, names[1]), sents[half:], dt)
    shards.write_index(os.path.join(d, "train.index.npz"), shards.SplitIndex(
        np.array([len(doc) for doc in docs]), np.array([len(s) for s in sents])))
    manifest = {"format_version": shards.FORMAT_VERSION, "token_dtype": dt.name, "vocab_size": V,
                "special_ids": {"bos": BOS, "pad": PAD, "eos": EOS, "unk": 3, "mask": MASK},
                "tokenizer": {"fingerprint": FP},
                "splits": {"train": {"index": "train.index.npz", "shards": names}}}
    with open(os.path.join(d, shards.MANIFEST), "w") as f:
        json.dump(manifest, f)
    return d, docs


def _data(**overrides):
    c = tiny.get_config().data           # max_length 128, max_predictions 24, no workers
    c.tokenizer = "builtin"
    for k, v in overrides.items():
        c[k] = v
    return c


def _epoch(corpus, epochs=1, seed=0, **overrides):
    """All rows of `epochs` epochs, stacked."""
    ds = pipeline.make_examples(_data(**overrides), corpus[0], "train", seed=seed, epochs=epochs)
    rows = [ds[i] for i in range(len(ds))]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _inputs(rows):
    """Each packed input of each row: (row index, input number, original tokens)."""
    for r, (ids, seg) in enumerate(zip(rows["original_ids"], rows["segment_ids"])):
        for k in range(1, seg.max() + 1):
            yield r, k, ids[seg == k]


def _find(hay: np.ndarray, needle: np.ndarray) -> bool:
    """Whether `needle` occurs contiguously in `hay` (int32 arrays)."""
    h, n = hay.astype(np.int32).tobytes(), needle.astype(np.int32).tobytes()
    i = h.find(n)
    while i != -1 and i % 4:
        i = h.find(n, i + 1)
    return i != -1


@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_row_layout_segments_positions_and_masks(corpus, fmt):
    rows = _epoch(corpus, format=fmt)
    L = 128
    for i in range(len(rows["input_ids"])):
        ids, seg, pos = rows["original_ids"][i], rows["segment_ids"][i], rows["position_ids"][i]
        real = ids != PAD
        assert np.array_equal(seg > 0, real) and np.array_equal(pos == PAD, ~real)
        assert real[:real.sum()].all(), "padding only at the end"
        k = seg.max()
        assert np.array_equal(np.unique(seg[real]), np.arange(1, k + 1))
        for j in range(1, k + 1):                 # contiguous inputs, positions restart at 2
            at = np.flatnonzero(seg == j)
            assert np.array_equal(at, np.arange(at[0], at[0] + len(at)))
            assert np.array_equal(pos[at], np.arange(2, 2 + len(at)))
            assert ids[at[0]] == BOS and ids[at[-1]] == EOS
        n = int(rows["mlm_weights"][i].sum())
        restored = rows["input_ids"][i].copy()
        restored[rows["mlm_positions"][i][:n]] = rows["mlm_targets"][i][:n]
        assert np.array_equal(restored, ids)
        assert 0 < n <= 24 and rows["mlm_overflow"][i] == 0
    assert rows["input_ids"].shape == (len(rows["input_ids"]), L)
    assert sorted(rows["example_ids"].tolist()) == list(range(len(rows["example_ids"])))


def test_full_sentences_rows_are_full_and_cross_documents(corpus):
    d, docs = corpus
    rows = _epoch(corpus, format="full_sentences")
    order = np.argsort(rows["example_ids"])
    # Row contents in record order, minus <s> ... </s>, give back the corpus with one </s>
    # between documents, except where a row boundary falls between two documents.
    stream = [rows["original_ids"][i][1:(rows["original_ids"][i] != PAD).sum() - 1] for i in order]
    joined = np.concatenate(stream)
    corpus_tokens = np.concatenate([np.concatenate(doc) for doc in docs])
    assert np.array_equal(joined[joined != EOS], corpus_tokens)
    crossing = sum(int((s == EOS).sum()) for s in stream)
    assert crossing > 20 and crossing + len(stream) - 1 >= len(docs) - 1
    # Full: no row could have taken the next sentence (white-box on the block table).
    fmt = formats.make_format("full_sentences", *_index(d), 128, BOS, EOS)
    lengths, sep = _index(d)[0], set(formats.separator_after(_index(d)[1], len(_index(d)[0])))
    b = fmt.blocks
    for i in range(len(b) - 1):
        if b.start[i + 1] == b.stop[i] - 1:       # a cut long sentence goes on: row is full
            assert b.tokens[i] == 126
            continue
        used = b.tokens[i] + sum(int(s) in sep for s in range(b.start[i] + 1, b.stop[i]))
        need = lengths[b.stop[i]] + (int(b.stop[i]) in sep)
        assert used + need > 126, f"row {i} had room for the next sentence"


def _index(d):
    idx = shards.ShardedCorpus(d, "train").index
    return idx.sentence_lengths, idx.doc_offsets()


def test_doc_sentences_never_cross_documents_and_pack_short_inputs(corpus):
    d, docs = corpus
    rows = _epoch(corpus, format="doc_sentences")
    doc_streams = [np.concatenate(doc) for doc in docs]
    pieces = [[] for _ in docs]
    for _, _, tokens in _inputs(rows):
        body = tokens[1:-1]
        owners = [j for j, s in enumerate(doc_streams) if _find(s, body)]
        assert len(owners) == 1, "an input is not a piece of exactly one document"
        pieces[owners[0]].append(body)
    for j, s in enumerate(doc_streams):           # the pieces cover every document exactly
        assert sum(len(p) for p in pieces[j]) == len(s)
    assert (rows["segment_ids"].max(1) > 1).sum() > 20, "short inputs are packed together"
    fill = (rows["original_ids"] != PAD).mean()
    assert fill > 0.85, f"tokens per row should stay about constant, fill {fill:.2f}"


@pytest.mark.parametrize("fmt", formats.PAIR_FORMATS)
def test_nsp_labels_balanced_and_negatives_from_other_documents(corpus, fmt):
    _, docs = corpus
    rows = _epoch(corpus, epochs=3, format=fmt)
    doc_streams = [np.concatenate(doc) for doc in docs]
    w = rows["nsp_weights"] > 0
    assert np.array_equal(w.sum(1), rows["segment_ids"].max(1))
    labels = rows["nsp_labels"][w]
    n = len(labels)
    assert abs(labels.mean() - 0.5) <= 4.5 * np.sqrt(0.25 / n), (labels.mean(), n)
    checked = 0
    for r, k, tokens in _inputs(rows):
        assert rows["original_ids"][r][rows["nsp_positions"][r][k - 1]] == BOS
        label = rows["nsp_labels"][r][k - 1]
        cut = np.flatnonzero(tokens == EOS)[0]
        assert tokens[cut + 1] == EOS, "<s> A </s></s> B </s>"
        a, b = tokens[1:cut], tokens[cut + 2:-1]
        home = [j for j, s in enumerate(doc_streams) if _find(s, a)]
        assert home, "A comes from the corpus"
        if len(home) > 1:                         # a 1-2 token A is not unique to a document
            continue
        checked += 1
        if label == 1:
            assert _find(doc_streams[home[0]], np.concatenate([a, b]))
        else:
            assert not _find(doc_streams[home[0]], b)
            assert any(_find(s, b) for s in doc_streams), "B comes from the corpus"
    assert checked > 0.9 * n
    # Pairing is redrawn each epoch; for sentence_pair a negative B has the true B's length,
    # so the packed layout (fixed once) is the same in every epoch.
    by = {(int(e), int(x)): i for i, (e, x) in enumerate(zip(rows["epoch"], rows["example_ids"]))}
    per_epoch = len(rows["example_ids"]) // 3
    redrawn = sum(not np.array_equal(rows["nsp_labels"][by[0, x]], rows["nsp_labels"][by[1, x]])
                  for x in range(per_epoch))
    assert redrawn > 0.3 * per_epoch
    if fmt == "sentence_pair":
        assert all(np.array_equal(rows["segment_ids"][by[0, x]], rows["segment_ids"][by[e, x]])
                   for x in range(per_epoch) for e in (1, 2))


def test_same_seed_same_batches_other_seed_other_batches(corpus):
    def first(seed):
        ds = pipeline.make_dataset(_data(), corpus[0], "train", batch_size=8, seed=seed)
        return [ds[i] for i in range(3)]
    a, b, c = first(5), first(5), first(6)
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
    assert not np.array_equal(a[0]["example_ids"], c[0]["example_ids"])


@pytest.mark.parametrize("masking", ["dynamic", "static"])
def test_mask_redrawn_each_epoch_only_when_dynamic(corpus, masking):
    rows = _epoch(corpus, epochs=2, masking=masking, dupe_factor=2)
    n = len(rows["example_ids"]) // 2
    assert n == (2 if masking == "static" else 1) * len(
        formats.make_format("full_sentences", *_index(corpus[0]), 128, BOS, EOS))
    by = {(int(e), int(x)): i for i, (e, x) in enumerate(zip(rows["epoch"], rows["example_ids"]))}
    same = [np.array_equal(rows["input_ids"][by[0, x]], rows["input_ids"][by[1, x]])
            for x in range(n)]
    assert np.array_equal(rows["original_ids"][by[0, 0]], rows["original_ids"][by[1, 0]])
    if masking == "dynamic":
        assert not any(same)
    else:
        assert all(same)
        # Each duplicated copy of a row is its own record with its own mask.
        copy = by[0, n // 2]
        assert np.array_equal(rows["original_ids"][by[0, 0]], rows["original_ids"][copy])
        assert not np.array_equal(rows["input_ids"][by[0, 0]], rows["input_ids"][copy])


def test_hosts_split_the_global_batch(corpus):
    full = pipeline.make_dataset(_data(), corpus[0], "train", batch_size=8, seed=1)
    parts = [pipeline.make_dataset(_data(), corpus[0], "train", batch_size=8, seed=1,
                                   process_index=h, process_count=2) for h in range(2)]
    for step in (0, 1, 70):
        one = full[step]
        two = [p[step] for p in parts]
        assert all(len(t["example_ids"]) == 4 for t in two)
        joined = {k: np.concatenate([t[k] for t in two]) for k in one}
        order = np.argsort(one["example_ids"])
        order2 = np.argsort(joined["example_ids"])
        for k in one:
            assert np.array_equal(one[k][order], joined[k][order2]), k


@pytest.mark.parametrize("workers", [0, 2])
def test_orbax_restore_continues_exactly(corpus, tmp_path, workers):
    import grain
    import orbax.checkpoint as ocp
    flags.FLAGS(sys.argv[:1])                     # Grain workers read absl flags

    def iterator():
        return pipeline.make_iterator(_data(format="sentence_pair"), corpus[0], "train",
                                      batch_size=8, seed=3, num_workers=workers)

    reference = iterator()
    expected = [next(reference) for _ in range(6)][3:]
    it = iterator()
    for _ in range(3):
        next(it)
    mngr = ocp.CheckpointManager(str(tmp_path / "ckpt"), item_names=("data",))
    mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    fresh = iterator()
    restored = mngr.restore(3, args=ocp.args.Composite(
        data=grain.checkpoint.CheckpointRestore(fresh))).data
    mngr.close()
    for want in expected:
        got = next(restored)
        assert all(np.array_equal(got[k], want[k]) for k in want)


def test_whole_word_masking_with_a_table(corpus):
    starts = np.zeros(V, bool)
    starts[::3] = True
    ds = pipeline.make_examples(_data(whole_word_mask=True, max_predictions=40), corpus[0],
                                "train", seed=0, epochs=1, word_starts=starts)
    row = ds[0]
    chosen = row["mlm_positions"][row["mlm_weights"] > 0]
    ids = row["original_ids"]
    for p in chosen:                               # a chosen continuation has its word start
        if not starts[ids[p]] and ids[p - 1] not in (BOS, EOS):
            assert p - 1 in chosen


def test_bad_input_gives_clear_errors(corpus):
    d = corpus[0]
    with pytest.raises(ValueError, match="fingerprint"):
        pipeline.make_dataset(_data(), d, "train", batch_size=8, seed=0,
                              tokenizer_fingerprint="another-tokenizer")
    with pytest.raises(ValueError, match="fewer than one batch"):
        pipeline.make_dataset(_data(), d, "train", batch_size=100_000, seed=0)
    with pytest.raises(ValueError, match="config.data.format='doc_sentence'"):
        pipeline.make_dataset(_data(format="doc_sentence"), d, "train", batch_size=8, seed=0)
    with pytest.raises(ValueError, match="config.data.masking"):
        pipeline.make_dataset(_data(masking="dinamic"), d, "train", batch_size=8, seed=0)
    with pytest.raises(ValueError, match="max_predictions"):
        pipeline.make_dataset(_data(max_predictions=10), d, "train", batch_size=8, seed=0)
    with pytest.raises(KeyError, match="no split 'valid'"):
        pipeline.make_dataset(_data(), d, "valid", batch_size=8, seed=0)


@pytest.mark.parametrize("max_length,mask_prob", [(512, 0.15), (128, 0.15), (128, 0.2)])
def test_default_head_capacity_follows_max_length(corpus, max_length, mask_prob):
    """configs/base.py sizes the gathered MLM head (max_predictions) to the most that exact
    masking can choose at the configured length and rate: 77 at 512, not 4x that at 128."""
    d = base.get_config().data
    d.max_length, d.mask_prob = max_length, mask_prob
    need = masking.exact_capacity_needed(max_length - 2, mask_prob)
    assert d.max_predictions == need == {512: 77, 128: 19 if mask_prob == 0.15 else 26}[max_length]
    d.max_predictions = 90  # an explicit value wins
    d.max_length = 256
    assert d.max_predictions == 90
    small = base.get_config().data
    small.max_length, small.num_workers = 128, 0
    batch = next(iter(pipeline.make_dataset(small, corpus[0], "train", batch_size=8, seed=0)))
    assert batch["mlm_positions"].shape == (8, 19)


def test_inspect_prints_and_dumps(corpus, tmp_path):
    out = tmp_path / "dump.npz"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-m", "robertax.data.inspect", "--config=configs/tiny.py",
         f"--config.data.corpus={corpus[0]}", "--config.data.format=segment_pair",
         "--config.batch_size=4", "--num_batches=2", "--epochs=2", f"--output={out}"],
        cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[" in proc.stdout and "-><mask>]" in proc.stdout
    dump = np.load(out)
    assert set(dump.files) == {"input_ids", "original_ids", "mlm_mask", "example_ids", "epoch",
                               "nsp_labels", "nsp_weights"}
    assert dump["input_ids"].shape == (16, 128) and dump["nsp_labels"].shape == (16, 1)
    assert (dump["nsp_weights"] == 1).all()  # segment_pair: one input (one NSP slot) a row
    assert dump["epoch"].tolist() == [0] * 8 + [1] * 8
    changed = dump["input_ids"] != dump["original_ids"]
    assert not (changed & ~dump["mlm_mask"]).any()
    assert 0.10 < dump["mlm_mask"].sum() / (dump["original_ids"] != PAD).sum() < 0.16
