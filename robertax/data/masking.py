"""BERT/RoBERTa masked-LM corruption of one row of token ids, in plain numpy.

The input pipeline calls `mask_row` once per row with a generator seeded by (seed, record, epoch),
so masks are dynamic (a new draw every epoch), reproducible and resumable; static masking is the
same call with the epoch fixed (Section 4.1 of the paper).

Selection (Section 2.3 of BERT, kept by RoBERTa): `mask_prob` (15%) of the maskable tokens are
chosen; of those `mask_token_prob` (80%) become `<mask>`, `random_token_prob` (10%) a random
non-special token, the rest stay unchanged. Special tokens and padding are never chosen, and a
random replacement is never a special token. Two ways to count:
  - "exact" (fairseq): floor(p * n + u), u ~ U[0, 1), units drawn without replacement, so every
    row gets p * n in expectation and within one of it always;
  - "independent": each unit is chosen with probability p on its own (BERT's Bernoulli view).
A unit is a token, or with whole-word masking a word: a word-start token and the continuation
tokens after it (a token after a special token always starts a word).

The loss runs on the chosen positions only, gathered to a fixed capacity `max_predictions`. If a
row's choice exceeds it (possible with "independent" draws or whole words), whole units are kept
in random order while they fit; the rest are left uncorrupted (so the input never shows a
corruption the loss does not see) and their token count is returned as `overflow`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

COUNT_MODES = ("exact", "independent")


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """Everything `mask_row` needs; a frozen dataclass of arrays, so it pickles into workers."""

    mask_id: int
    special: np.ndarray          # [V] bool: never chosen (bos, pad, eos, unk, mask)
    random_ids: np.ndarray       # [V - #special] int32: candidates for the random replacement
    max_predictions: int
    mask_prob: float = 0.15
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1
    count: str = "exact"
    word_starts: np.ndarray | None = None  # [V] bool; set for whole-word masking

    def __post_init__(self):
        if self.count not in COUNT_MODES:
            raise ValueError(f"mask count mode {self.count!r} is not one of {COUNT_MODES}")
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"mask_prob={self.mask_prob} must lie in (0, 1)")
        if min(self.mask_token_prob, self.random_token_prob) < 0 or \
                self.mask_token_prob + self.random_token_prob > 1.0:
            raise ValueError(f"mask_token_prob={self.mask_token_prob} and random_token_prob="
                             f"{self.random_token_prob} must be >= 0 and sum to at most 1")
        if self.max_predictions < 1:
            raise ValueError(f"max_predictions={self.max_predictions} must be >= 1")
        if len(self.random_ids) == 0:
            raise ValueError("the vocabulary has no non-special token to draw random tokens from")
        if self.word_starts is not None and len(self.word_starts) != len(self.special):
            raise ValueError(f"word-start table has {len(self.word_starts)} entries, the "
                             f"vocabulary {len(self.special)}")


def make_spec(vocab_size: int, special_ids, mask_id: int, max_predictions: int, *,
              mask_prob=0.15, mask_token_prob=0.8, random_token_prob=0.1, count="exact",
              word_starts=None) -> MaskSpec:
    special = np.zeros(vocab_size, bool)
    special[np.asarray(list(special_ids), np.int64)] = True
    return MaskSpec(mask_id=int(mask_id), special=special,
                    random_ids=np.flatnonzero(~special).astype(np.int32),
                    max_predictions=int(max_predictions), mask_prob=float(mask_prob),
                    mask_token_prob=float(mask_token_prob),
                    random_token_prob=float(random_token_prob), count=count,
                    word_starts=None if word_starts is None else np.asarray(word_starts, bool))


def exact_capacity_needed(max_candidates: int, mask_prob: float) -> int:
    """The most tokens "exact" token-level selection can choose among `max_candidates`."""
    return min(max_candidates, math.floor(mask_prob * max_candidates) + 1)


@dataclasses.dataclass
class Masked:
    input_ids: np.ndarray   # [L] int32, corrupted
    positions: np.ndarray   # [P] int32, chosen positions ascending, then zeros
    targets: np.ndarray     # [P] int32, original ids at `positions`, then zeros
    weights: np.ndarray     # [P] float32, 1 on real predictions
    overflow: int           # chosen tokens dropped for lack of capacity


def _units(ids: np.ndarray, cand: np.ndarray, spec: MaskSpec):
    """Positions of the maskable tokens grouped into units: (unit id per candidate, #units)."""
    if spec.word_starts is None:
        return None, len(cand)
    starts = spec.word_starts[ids[cand]]
    # A token right after a special (or padding) starts a word even if the table says it
    # continues one: words never span a separator, and rows may begin mid-word after chunking.
    gap = np.empty(len(cand), bool)
    gap[:1] = True
    gap[1:] = np.diff(cand) != 1
    unit = np.cumsum(starts | gap) - 1
    return unit, (int(unit[-1]) + 1 if len(unit) else 0)


def mask_row(ids: np.ndarray, rng: np.random.Generator, spec: MaskSpec) -> Masked:
    """Chooses and corrupts positions of one row `ids` [L] (int32, specials and padding included)."""
    ids = np.asarray(ids, np.int32)
    P = spec.max_predictions
    cand = np.flatnonzero(~spec.special[ids])          # maskable positions, ascending
    unit_of, n_units = _units(ids, cand, spec)

    # Chosen units, in random order (so capping below drops a random subset).
    if spec.count == "exact":
        k = min(n_units, int(spec.mask_prob * n_units + rng.random()))
        chosen = rng.choice(n_units, size=k, replace=False) if k else np.zeros(0, np.int64)
    else:
        chosen = np.flatnonzero(rng.random(n_units) < spec.mask_prob)

    if unit_of is None:
        sizes = np.ones(len(chosen), np.int64)
    else:
        sizes = np.bincount(unit_of, minlength=n_units)[chosen]
    total = int(sizes.sum())
    overflow = 0
    if total > P:
        if spec.count == "independent":
            order = rng.permutation(len(chosen))
            chosen, sizes = chosen[order], sizes[order]
        keep = np.cumsum(sizes) <= P
        overflow = total - int(sizes[keep].sum())
        chosen = chosen[keep]

    if unit_of is None:
        pos = np.sort(cand[chosen])
    else:
        picked = np.zeros(n_units, bool)
        picked[chosen] = True
        pos = cand[picked[unit_of]]                     # ascending already
    m = len(pos)

    out = ids.copy()
    u = rng.random(m)
    to_mask = u < spec.mask_token_prob
    to_random = (~to_mask) & (u < spec.mask_token_prob + spec.random_token_prob)
    out[pos[to_mask]] = spec.mask_id
    n_random = int(to_random.sum())
    if n_random:
        out[pos[to_random]] = spec.random_ids[rng.integers(len(spec.random_ids), size=n_random)]

    positions = np.zeros(P, np.int32)
    targets = np.zeros(P, np.int32)
    weights = np.zeros(P, np.float32)
    positions[:m] = pos
    targets[:m] = ids[pos]
    weights[:m] = 1.0
    return Masked(out, positions, targets, weights, overflow)
