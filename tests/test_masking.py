"""Masked-LM corruption (robertax.data.masking): statistics, invariants, capacity policy."""

import numpy as np
import pytest

from robertax.data import masking

V, BOS, PAD, EOS, UNK, MASK = 1000, 0, 1, 2, 3, 4
SPECIALS = (BOS, PAD, EOS, UNK, MASK)
L = 512


def _spec(**kw):
    kw.setdefault("max_predictions", 80)
    return masking.make_spec(V, SPECIALS, MASK, **kw)


def _rows(n, seed=0):
    """Rows like the pipeline's: <s> text </s> [</s> text </s>] ... padding; ~1.3e5 tokens."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        real = int(rng.integers(L // 2, L + 1))
        row = np.full(L, PAD, np.int32)
        row[:real] = rng.integers(5, V, real)
        row[0], row[real - 1] = BOS, EOS
        row[rng.integers(1, real - 1, 3)] = EOS          # separators inside the row
        row[rng.integers(1, real - 1, 2)] = UNK
        rows.append(row)
    return rows


def _run(spec, rows, seed=0):
    return [masking.mask_row(r, np.random.default_rng([seed, i]), spec) for i, r in enumerate(rows)]


def _within(count, n, p, sigmas=4.5):
    """|count/n - p| within `sigmas` binomial standard deviations."""
    return abs(count - n * p) <= sigmas * np.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("count", ["exact", "independent"])
def test_selection_rate_and_80_10_10_split(count):
    spec = _spec(count=count, max_predictions=120)
    rows = _rows(350)
    out = _run(spec, rows)
    maskable = sum(int((~spec.special[r]).sum()) for r in rows)
    assert maskable >= 100_000
    chosen = sum(int(m.weights.sum()) for m in out)
    assert _within(chosen, maskable, 0.15)
    kinds = np.zeros(3, np.int64)   # <mask>, random (changed), unchanged
    for r, m in zip(rows, out):
        k = int(m.weights.sum())
        shown, orig = m.input_ids[m.positions[:k]], r[m.positions[:k]]
        kinds += [(shown == MASK).sum(), ((shown != MASK) & (shown != orig)).sum(),
                  (shown == orig).sum()]
    assert kinds.sum() == chosen
    # A random replacement equals the original with probability 1 / #non-special ids.
    q = 1 / len(spec.random_ids)
    for got, p in zip(kinds, (0.8, 0.1 * (1 - q), 0.1 + 0.1 * q)):
        assert _within(got, chosen, p), (kinds, chosen)


def test_exact_count_per_row():
    spec = _spec()
    for r, m in zip(_rows(50), _run(spec, _rows(50))):
        n = int((~spec.special[r]).sum())
        assert int(m.weights.sum()) in (int(0.15 * n), int(0.15 * n) + 1)
        assert m.overflow == 0


@pytest.mark.parametrize("count", ["exact", "independent"])
def test_specials_and_padding_never_chosen_nor_drawn(count):
    spec = _spec(count=count, max_predictions=120)
    rows = _rows(100, seed=1)
    for r, m in zip(rows, _run(spec, rows)):
        k = int(m.weights.sum())
        assert not np.isin(r[m.positions[:k]], SPECIALS).any()
        changed = m.input_ids != r
        # Only chosen positions change; a change is <mask> or a non-special token.
        assert set(np.flatnonzero(changed)) <= set(m.positions[:k].tolist())
        assert not np.isin(m.input_ids[changed], (BOS, PAD, EOS, UNK)).any()
        assert np.array_equal(m.input_ids[np.isin(r, SPECIALS)], r[np.isin(r, SPECIALS)])


def test_originals_recoverable_and_layout():
    spec = _spec()
    rows = _rows(20, seed=2)
    for r, m in zip(rows, _run(spec, rows)):
        k = int(m.weights.sum())
        assert np.all(np.diff(m.positions[:k]) > 0)          # ascending, distinct
        assert not m.weights[k:].any() and not m.positions[k:].any()
        restored = m.input_ids.copy()
        restored[m.positions[:k]] = m.targets[:k]
        assert np.array_equal(restored, r)
        assert m.input_ids.dtype == np.int32 and m.weights.dtype == np.float32


def test_same_seed_same_mask_new_seed_new_mask():
    spec, row = _spec(), _rows(1)[0]
    a = masking.mask_row(row, np.random.default_rng([0, 7, 1]), spec)
    b = masking.mask_row(row, np.random.default_rng([0, 7, 1]), spec)
    c = masking.mask_row(row, np.random.default_rng([0, 7, 2]), spec)
    assert np.array_equal(a.input_ids, b.input_ids) and np.array_equal(a.positions, b.positions)
    assert not np.array_equal(a.positions, c.positions)


def test_whole_word_masking_takes_whole_words():
    rng = np.random.default_rng(3)
    starts = rng.random(V) < 0.5            # half the vocabulary begins a word
    starts[list(SPECIALS)] = True
    spec = _spec(word_starts=starts, max_predictions=200)
    rows = _rows(200, seed=3)
    words_total = words_chosen = 0
    for r, m in zip(rows, _run(spec, rows)):
        assert m.overflow == 0
        chosen = np.zeros(L, bool)
        chosen[m.positions[m.weights > 0]] = True
        cand = np.flatnonzero(~spec.special[r])
        new_word = starts[r[cand]] | np.r_[True, np.diff(cand) != 1]
        word = np.cumsum(new_word) - 1
        per_word = np.bincount(word, weights=chosen[cand], minlength=word[-1] + 1)
        sizes = np.bincount(word)
        assert np.all((per_word == 0) | (per_word == sizes)), "a word was partly chosen"
        words_total += len(sizes)
        words_chosen += int((per_word > 0).sum())
    assert _within(words_chosen, words_total, 0.15)


def test_overflow_is_counted_and_left_uncorrupted():
    spec = _spec(count="independent", max_predictions=40)   # ~76 expected in a full row
    row = np.full(L, 7, np.int32)
    row[0], row[-1] = BOS, EOS
    m = masking.mask_row(row, np.random.default_rng(0), spec)
    assert m.weights.sum() == 40 and m.overflow > 0
    assert 0.15 * 510 - 30 < m.overflow + 40 < 0.15 * 510 + 30
    # Positions beyond capacity keep their token: the input shows only what the loss sees.
    changed = np.flatnonzero(m.input_ids != row)
    assert set(changed) <= set(m.positions.tolist())


def test_bad_spec_is_rejected():
    with pytest.raises(ValueError, match="mask count"):
        _spec(count="sometimes")
    with pytest.raises(ValueError, match="sum to at most 1"):
        _spec(mask_token_prob=0.9, random_token_prob=0.2)
    assert masking.exact_capacity_needed(510, 0.15) == 77
