"""The paper's four input formats (Section 4.2), laid out once from the shard index.

Every format is a table of *rows* computed from sentence lengths alone (as fairseq's block
dataset), so the pipeline keeps random access: row i can be built at any time, in any order, on
any host. A row holds one or more *inputs*; an input is `<s> tokens </s>` or, for the pair
formats, `<s> A </s></s> B </s>`.

- full_sentences: whole sentences packed contiguously up to max_length, crossing documents with
  one extra `</s>` between documents (dropped at a row's edge). One input per row; every row but
  the last is full: the next sentence would not have fitted.
- doc_sentences: the same but a block never crosses a document, so document ends leave short
  blocks. The paper grows the batch to keep tokens per batch constant; under jit the shape must
  be static, so short blocks are instead *packed* several to a row (best-fit decreasing on their
  lengths, computed once). The model keeps them apart with segment ids (attention stays within an
  input) and positions restart per input, so each input is seen exactly as if alone in a row.
- segment_pair (+NSP): per document, blocks of whole sentences of at most max_length - 4 tokens,
  split at a random sentence boundary into A and B (BERT's recipe). With probability 1/2, B is
  instead a run of sentences from a random other document filling the remaining room. Split and
  choice are redrawn for every (record, epoch). One input per row.
- sentence_pair (+NSP): consecutive sentence pairs (2i, 2i+1) of each document. A negative B is
  a sentence of another document of the *same length* as the true B, so the packing (computed
  once) holds every epoch and B's length tells nothing about the label. Pairs are packed into
  rows like doc_sentences, at most `max_inputs_per_row` a row (the NSP capacity).

Sentences longer than a block are cut into block-sized pieces rather than dropped. NSP label 1
means B is the true continuation (IsNext), 0 that it comes from another document.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Callable

import numpy as np

FORMATS = ("full_sentences", "doc_sentences", "segment_pair", "sentence_pair")
PAIR_FORMATS = ("segment_pair", "sentence_pair")

Reader = Callable[[int, int], list]  # (start, stop) -> int32 token arrays of those sentences


@dataclasses.dataclass(frozen=True)
class Input:
    tokens: np.ndarray  # int32, with its special tokens
    nsp_label: int = -1  # 1 IsNext, 0 random B, -1 no NSP


@dataclasses.dataclass(frozen=True)
class Blocks:
    """Token ranges over the sentence stream: sentences [start, stop), the first read from
    `offset`, the last up to `end`."""
    start: np.ndarray   # [N] int64
    offset: np.ndarray  # [N] int64
    stop: np.ndarray    # [N] int64
    end: np.ndarray     # [N] int64
    tokens: np.ndarray  # [N] int64 content tokens (no specials)

    def __len__(self):
        return len(self.start)

    def take(self, keep: np.ndarray) -> "Blocks":
        return Blocks(*(a[keep] for a in dataclasses.astuple(self)))

    def pieces(self, i: int, sentences: list) -> list:
        """The block's pieces of `sentences` (those of [start, stop), in order)."""
        s0, o0, s1, e1 = (int(self.start[i]), int(self.offset[i]), int(self.stop[i]),
                          int(self.end[i]))
        out = list(sentences)
        if s1 - s0 == 1:
            return [out[0][o0:e1]]
        out[0], out[-1] = out[0][o0:], out[-1][:e1]
        return out


def separator_after(doc_offsets: np.ndarray, num_sentences: int) -> np.ndarray:
    """Sorted v such that a document separator follows sentence v - 1."""
    v = np.unique(doc_offsets[1:-1])
    return v[(v > 0) & (v < num_sentences)]


def compute_blocks(lengths: np.ndarray, doc_offsets: np.ndarray, capacity: int,
                   cross_documents: bool) -> Blocks:
    """Greedy blocks of whole sentences of at most `capacity` tokens (fairseq's "complete" break
    mode); a sentence longer than `capacity` is cut into pieces. Crossing documents costs one
    separator token after each document's last sentence, counted even where it is dropped."""
    lengths = np.asarray(lengths, np.int64)
    S = len(lengths)
    cost = lengths.copy()
    if cross_documents:
        cost[separator_after(doc_offsets, S) - 1] += 1
    cum = np.concatenate([[0], np.cumsum(cost)])
    doc_end = doc_offsets[1:]
    out = [], [], [], []
    s, o, d = 0, 0, 0
    # One Python step per block, not per sentence: ~4 µs each here, so ~9 s per billion tokens
    # at max_length 512 (BERT's 16 GB: ~40 s; RoBERTa's 160 GB: ~6 min, once per host).
    while s < S:
        rem = int(lengths[s]) - o
        if rem > capacity:
            e, end = s + 1, o + capacity
        else:
            e = int(np.searchsorted(cum, cum[s] + o + capacity, side="right")) - 1
            if not cross_documents:
                while doc_end[d] <= s:
                    d += 1
                e = min(e, int(doc_end[d]))
            e = max(e, s + 1)
            end = int(lengths[e - 1])
        for col, v in zip(out, (s, o, e, end)):
            col.append(v)
        s, o = (s, end) if end < lengths[s] and e == s + 1 else (e, 0)
    start, offset, stop, end = (np.asarray(c, np.int64) for c in out)
    cum_len = np.concatenate([[0], np.cumsum(lengths)])
    tokens = cum_len[stop] - cum_len[start] - offset - (lengths[stop - 1] - end)
    blocks = Blocks(start, offset, stop, end, tokens)
    return blocks.take(tokens > 0)


def pack(sizes: np.ndarray, capacity: int, max_count: int | None = None):
    """Best-fit decreasing bin packing of inputs of `sizes` into rows of `capacity`.

    Returns (row_ptr [R+1], members [N]): row r holds inputs members[row_ptr[r]:row_ptr[r+1]]
    in input order. Deterministic; computed once per dataset.
    """
    sizes = np.asarray(sizes, np.int64)
    if len(sizes) and sizes.max() > capacity:
        raise ValueError(f"an input of {sizes.max()} tokens does not fit a row of {capacity}")
    row_of = np.empty(len(sizes), np.int64)
    free: dict[int, list[int]] = {}   # remaining room -> rows with exactly that room
    rooms: list[int] = []             # sorted keys of `free`
    counts: list[int] = []
    for i in np.argsort(-sizes, kind="stable").tolist():
        n = int(sizes[i])
        j = bisect.bisect_left(rooms, n)
        if j < len(rooms):
            room = rooms[j]
            row = free[room].pop()
            if not free[room]:
                del free[room]
                rooms.pop(j)
            room -= n
        else:
            row, room = len(counts), capacity - n
            counts.append(0)
        counts[row] += 1
        row_of[i] = row
        if room > 0 and (max_count is None or counts[row] < max_count):
            if room not in free:
                bisect.insort(rooms, room)
                free[room] = []
            free[room].append(row)
    members = np.lexsort((np.arange(len(sizes)), row_of))
    row_ptr = np.concatenate([[0], np.cumsum(np.bincount(row_of, minlength=len(counts)))])
    return row_ptr.astype(np.int64), members.astype(np.int64)


def _with_specials(parts, bos, eos):
    return np.concatenate([[bos], *parts, [eos]]).astype(np.int32)


def _pair(a, b, bos, eos):
    return np.concatenate([[bos], a, [eos, eos], b, [eos]]).astype(np.int32)


class Format:
    """A table of rows; `build(row, rng, read)` returns the row's inputs."""
    nsp_capacity = 0  # NSP labels per row (0: no NSP)

    def __init__(self, doc_offsets, max_length: int, bos: int, eos: int):
        # Only what `build` needs is kept: the object is pickled into every Grain worker.
        self.doc_offsets = np.asarray(doc_offsets, np.int64)
        self.max_length, self.bos, self.eos = max_length, bos, eos

    def __len__(self) -> int:
        raise NotImplementedError

    def build(self, row: int, rng: np.random.Generator, read: Reader) -> list[Input]:
        raise NotImplementedError


class FullSentences(Format):
    def __init__(self, lengths, doc_offsets, max_length, bos, eos):
        super().__init__(doc_offsets, max_length, bos, eos)
        self.blocks = compute_blocks(lengths, self.doc_offsets, max_length - 2, True)
        self.sep_after = separator_after(self.doc_offsets, len(lengths))

    def __len__(self):
        return len(self.blocks)

    def build(self, row, rng, read):
        b = self.blocks
        s0, s1 = int(b.start[row]), int(b.stop[row])
        pieces = b.pieces(row, read(s0, s1))
        # Sentences s in [s0, s1 - 1) that end a document get a separator after them.
        lo, hi = np.searchsorted(self.sep_after, [s0 + 1, s1])
        ends = set((self.sep_after[lo:hi] - 1 - s0).tolist())
        parts = []
        for k, p in enumerate(pieces):
            parts.append(p)
            if k in ends:
                parts.append(np.array([self.eos], np.int32))
        return [Input(_with_specials(parts, self.bos, self.eos))]


class _Packed(Format):
    """Shared by the formats that pack several inputs into a row."""

    def _pack(self, sizes, max_count=None):
        self.row_ptr, self.members = pack(sizes, self.max_length, max_count)

    def __len__(self):
        return len(self.row_ptr) - 1

    def row_inputs(self, row) -> np.ndarray:
        return self.members[self.row_ptr[row]:self.row_ptr[row + 1]]


class DocSentences(_Packed):
    def __init__(self, lengths, doc_offsets, max_length, bos, eos):
        super().__init__(doc_offsets, max_length, bos, eos)
        self.blocks = compute_blocks(lengths, self.doc_offsets, max_length - 2, False)
        self._pack(self.blocks.tokens + 2)

    def build(self, row, rng, read):
        b = self.blocks
        return [Input(_with_specials(b.pieces(i, read(int(b.start[i]), int(b.stop[i]))),
                                     self.bos, self.eos))
                for i in self.row_inputs(row).tolist()]


def _other_document(rng, nonempty_docs: np.ndarray, doc: int) -> int:
    """A uniformly random non-empty document other than `doc`."""
    j = int(rng.integers(len(nonempty_docs) - 1))
    if j >= np.searchsorted(nonempty_docs, doc):  # skip `doc` itself
        j += 1
    return int(nonempty_docs[j])


class SegmentPair(Format):
    nsp_capacity = 1

    def __init__(self, lengths, doc_offsets, max_length, bos, eos):
        super().__init__(doc_offsets, max_length, bos, eos)
        self.lengths = np.asarray(lengths, np.int32)  # to size random-next segments
        self.capacity = max_length - 4
        blocks = compute_blocks(lengths, self.doc_offsets, self.capacity, False)
        self.blocks = blocks.take(blocks.tokens >= 2)  # A and B need a token each
        self.nonempty_docs = np.flatnonzero(np.diff(self.doc_offsets) > 0)
        if len(self.nonempty_docs) < 2:
            raise ValueError("segment_pair needs at least 2 non-empty documents for its "
                             "random-next segments")

    def __len__(self):
        return len(self.blocks)

    def build(self, row, rng, read):
        b = self.blocks
        s0, s1 = int(b.start[row]), int(b.stop[row])
        pieces = [p for p in b.pieces(row, read(s0, s1)) if len(p)]
        # Split into A | B at a random sentence boundary (a random token if one sentence),
        # drawn before the label so A looks the same whatever the label.
        if len(pieces) >= 2:
            k = int(rng.integers(1, len(pieces)))
            a, b_true = np.concatenate(pieces[:k]), np.concatenate(pieces[k:])
        else:
            t = int(rng.integers(1, len(pieces[0])))
            a, b_true = pieces[0][:t], pieces[0][t:]
        if rng.random() < 0.5:
            return [Input(_pair(a, b_true, self.bos, self.eos), 1)]
        doc = int(np.searchsorted(self.doc_offsets, s0, side="right")) - 1
        other = _other_document(rng, self.nonempty_docs, doc)
        d0, d1 = int(self.doc_offsets[other]), int(self.doc_offsets[other + 1])
        first = d0 + int(rng.integers(d1 - d0))
        budget = self.capacity - len(a)
        fits = np.cumsum(self.lengths[first:d1]) <= budget
        stop = first + max(1, int(fits.sum()))  # leading run of sentences that fit
        b_rand = np.concatenate(read(first, stop))[:budget]
        return [Input(_pair(a, b_rand, self.bos, self.eos), 0)]


class SentencePair(_Packed):
    def __init__(self, lengths, doc_offsets, max_length, bos, eos, max_inputs_per_row: int):
        super().__init__(doc_offsets, max_length, bos, eos)
        self.nsp_capacity = int(max_inputs_per_row)
        lengths = np.asarray(lengths, np.int64)
        S, C = len(lengths), max_length - 4
        doc_of = np.repeat(np.arange(len(self.doc_offsets) - 1), np.diff(self.doc_offsets))
        offset_in_doc = np.arange(S) - self.doc_offsets[doc_of]
        has_next = np.zeros(S, bool)
        has_next[:-1] = doc_of[:-1] == doc_of[1:]
        first = np.flatnonzero((offset_in_doc % 2 == 0) & has_next)
        a, b = lengths[first], lengths[first + 1]
        keep = (a > 0) & (b > 0)
        self.first, a, b = first[keep], a[keep], b[keep]
        # BERT's truncate_seq_pair: trim the longer side until the pair fits; A loses its
        # start and B its end, so a true pair stays contiguous across the A|B junction.
        short = np.minimum(a, b)
        new_short = np.minimum(short, C // 2)
        new_long = C - new_short
        over = a + b > C
        self.a_len = np.where(over, np.where(a >= b, new_long, new_short), a)
        self.b_len = np.where(over, np.where(a >= b, new_short, new_long), b)
        self.nonempty_docs = np.flatnonzero(np.diff(self.doc_offsets) > 0)
        if len(self.first) == 0 or len(self.nonempty_docs) < 2:
            raise ValueError("sentence_pair needs at least 2 documents, one of them with 2 "
                             "sentences")
        # Negatives are drawn from sentences of the same length as the true B.
        self.by_length = np.argsort(lengths, kind="stable")
        self.sorted_lengths = lengths[self.by_length]  # int64: searchsorted on int32 with a
                                                       # Python int copies the whole array
        if S < 2**31:
            self.by_length = self.by_length.astype(np.int32)
        self._pack(self.a_len + self.b_len + 4, self.nsp_capacity)

    def _doc(self, s: int) -> int:
        return int(np.searchsorted(self.doc_offsets, s, side="right")) - 1

    def _negative(self, rng, length: int, doc: int) -> int:
        """A sentence of another document, of exactly `length` tokens where one exists (else
        of the nearest longer length, to be cut)."""
        lo = int(np.searchsorted(self.sorted_lengths, length, side="left"))
        hi = int(np.searchsorted(self.sorted_lengths, self.sorted_lengths[lo], side="right"))
        for lo_, hi_ in ((lo, hi), (lo, len(self.by_length))):
            for _ in range(16):
                s = int(self.by_length[rng.integers(lo_, hi_)])
                if self._doc(s) != doc:
                    return s
        # Only this document has sentences that long (or we were unlucky 32 times): any
        # sentence of another document, possibly shorter than the slot.
        other = _other_document(rng, self.nonempty_docs, doc)
        d0, d1 = int(self.doc_offsets[other]), int(self.doc_offsets[other + 1])
        return d0 + int(rng.integers(d1 - d0))

    def build(self, row, rng, read):
        inputs = self.row_inputs(row)
        labels = (rng.random(len(inputs)) < 0.5).astype(np.int64)
        out = []
        for i, label in zip(inputs.tolist(), labels.tolist()):
            s = int(self.first[i])
            if label:
                a, b = read(s, s + 2)
            else:
                neg = self._negative(rng, int(self.b_len[i]), self._doc(s))
                (a,), (b,) = read(s, s + 1), read(neg, neg + 1)
            a, b = a[len(a) - self.a_len[i]:], b[:self.b_len[i]]
            out.append(Input(_pair(a, b, self.bos, self.eos), label))
        return out


def make_format(name: str, lengths, doc_offsets, max_length: int, bos: int, eos: int,
                max_inputs_per_row: int = 16) -> Format:
    if name not in FORMATS:
        raise ValueError(f"unknown input format {name!r} (config.data.format); "
                         f"choose one of {', '.join(FORMATS)}")
    if max_length < 8:
        raise ValueError(f"config.data.max_length={max_length} is too small (minimum 8)")
    if name == "full_sentences":
        return FullSentences(lengths, doc_offsets, max_length, bos, eos)
    if name == "doc_sentences":
        return DocSentences(lengths, doc_offsets, max_length, bos, eos)
    if name == "segment_pair":
        return SegmentPair(lengths, doc_offsets, max_length, bos, eos)
    return SentencePair(lengths, doc_offsets, max_length, bos, eos, max_inputs_per_row)
