"""SQuAD v1.1 / v2.0: readers, the official scoring, featurization into windows, span decoding.

  * `read_json(path)` reads the official JSON; `read_tfds(version, split)` reads TFDS `squad`.
  * `evaluate(dataset, predictions, version)` scores answer texts exactly as the official
    evaluate-v1.1.py / evaluate-v2.0.py do (same normalization, same arithmetic).
  * `featurize(examples, tokenizer, ...)` cuts each (question, context) into windows
    `<s> question </s></s> context-window </s>` with a stride over long contexts.
  * `decode(start_logits, end_logits, features, ...)` turns window logits back into answer
    texts, by n-best span search and, for v2.0, a comparison with the no-answer score.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import re
import string
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from robertax.data import tfds_source

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Example:
    id: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...]        # gold texts (several on dev), empty when unanswerable
    answer_starts: tuple[int, ...]  # character offsets of `answers` in `context`
    is_impossible: bool = False     # v2.0: the context holds no answer


def _version(version) -> str:
    v = str(version).lstrip("v")
    if v not in ("1.1", "2.0"):
        raise ValueError(f"SQuAD version must be '1.1' or '2.0', got {version!r}")
    return v


# ---------------------------------------------------------------------------- readers


def read_json(path: str | os.PathLike) -> list[Example]:
    """Every question of an official SQuAD JSON file (v1.1 or v2.0), in file order."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    examples = []
    for a, p, q, article, paragraph, qa in _walk(data, str(path)):
        where = f"{path}: data[{a}].paragraphs[{p}].qas[{q}]"
        try:
            answers = qa["answers"]
            texts = tuple(str(x["text"]) for x in answers)
            starts = tuple(int(x["answer_start"]) for x in answers)
            examples.append(Example(str(qa["id"]), str(article.get("title", "")),
                                    paragraph["context"], qa["question"], texts, starts,
                                    bool(qa.get("is_impossible", False))))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: malformed question ({type(e).__name__}: {e})") from None
    return examples


def _walk(data, source: str = "dataset"):
    """(article i, paragraph j, question k, article, paragraph, qa) over the official layout."""
    articles = data.get("data") if isinstance(data, Mapping) else data
    if not isinstance(articles, list):
        raise ValueError(f"{source}: expected the official SQuAD layout, a dict with a 'data' "
                         "list of articles (or that list)")
    for i, article in enumerate(articles):
        try:
            for j, paragraph in enumerate(article["paragraphs"]):
                paragraph["context"]  # fail here, with the position, if it is missing
                for k, qa in enumerate(paragraph["qas"]):
                    yield i, j, k, article, paragraph, qa
        except (KeyError, TypeError) as e:
            raise ValueError(f"{source}: data[{i}]: malformed article ({type(e).__name__}: {e})") from None


def read_tfds(version: str = "1.1", split: str = "validation",
              data_dir: str | None = None) -> list[Example]:
    """Every question of TFDS `squad/v1.1` or `squad/v2.0` (already prepared; never downloads)."""
    name = f"squad/v{_version(version)}"
    text = tfds_source.text
    examples = []
    for r in tfds_source.records(tfds_source.open_source(name, split, data_dir)):
        answers = r["answers"]
        examples.append(Example(
            text(r["id"]), text(r["title"]), text(r["context"]), text(r["question"]),
            tuple(text(t) for t in answers["text"]),
            tuple(int(s) for s in answers["answer_start"]),
            bool(r.get("is_impossible", False))))
    return examples


def as_official(examples: Iterable[Example], version: str = "1.1") -> dict:
    """Examples back in the official JSON layout, e.g. to `evaluate` gold read from TFDS."""
    paragraphs = [{"context": ex.context, "qas": [{
        "id": ex.id, "question": ex.question, "is_impossible": ex.is_impossible,
        "answers": [{"text": t, "answer_start": s} for t, s in zip(ex.answers, ex.answer_starts)],
    }]} for ex in examples]
    return {"version": _version(version), "data": [{"title": "", "paragraphs": paragraphs}]}


# ---------------------------------------------------------------------------- scoring

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, drop ASCII punctuation, the articles a/an/the and extra whitespace.

    The official scripts' normalization, in their order (lower, punctuation, articles,
    whitespace); any change here changes published scores.
    """
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _f1(prediction_tokens: list[str], gold_tokens: list[str]) -> float:
    common = collections.Counter(prediction_tokens) & collections.Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(gold_tokens)
    return (2 * precision * recall) / (precision + recall)


def _question_scores(golds: list[str], prediction: str, version: str) -> tuple[float, float]:
    """(exact, f1) of one prediction: the max over gold answers, per the version's rules."""
    pred = normalize_answer(prediction)
    exact = max(int(pred == normalize_answer(g)) for g in golds)
    pred_tokens = pred.split()
    f1s = []
    for g in golds:
        gold_tokens = normalize_answer(g).split()
        if version == "2.0" and (not gold_tokens or not pred_tokens):
            # v2.0: when either side is "no answer", F1 is 1 if both are, else 0.
            f1s.append(int(gold_tokens == pred_tokens))
        else:
            f1s.append(_f1(pred_tokens, gold_tokens))
    return exact, max(f1s)


def evaluate(dataset, predictions: Mapping[str, str], version: str = "1.1") -> dict[str, Any]:
    """Score answer texts against the gold answers as SQuAD's official scripts do.

    `dataset` is the parsed official JSON (the dict with "data", or the list under
    "data"; `as_official` builds one from Examples); `predictions` maps question id to
    answer text, "" meaning "no answer". Returns `exact_match` and `f1` in percent; v2.0
    also `total` and `HasAns_exact/f1/total`, `NoAns_exact/f1/total` (each present when
    that kind of question is).

    Rules (both versions): each question scores the max over its gold answers; the
    average runs over every question of the dataset. A question missing from
    `predictions` scores 0 and is reported in a logged message (evaluate-v1.1.py's
    rule; evaluate-v2.0.py would average over predicted questions only and then fail
    on the HasAns/NoAns split, so robertax applies the v1.1 rule to both). v2.0 adds:
    gold answers that normalize to "" are dropped and an unanswerable question's only
    gold answer is "", F1 between "" and a non-empty text is 0 (1 between two "").
    Predictions are texts, so no no-answer probability threshold is applied (as the
    official script does when it gets no --na-prob-file).
    """
    version = _version(version)
    if isinstance(dataset, Mapping) and "version" in dataset \
            and str(dataset["version"]).lstrip("v") != version:
        log.warning("scoring a SQuAD v%s dataset with the v%s rules", dataset["version"], version)
    exact, f1, has_ans, missing = {}, {}, {}, []
    for _, _, _, _, _, qa in _walk(dataset):
        qid = qa["id"]
        golds = [a["text"] for a in qa["answers"]]
        has_ans[qid] = bool(golds)
        if version == "2.0":
            golds = [g for g in golds if normalize_answer(g)] or [""]
        elif not golds:
            raise ValueError(f"question {qid} has no gold answer: v1.1 cannot score it "
                             "(score SQuAD v2.0 data with version='2.0')")
        if qid not in predictions:
            missing.append(qid)
            exact[qid], f1[qid] = 0, 0
            continue
        prediction = predictions[qid]
        if not isinstance(prediction, str):
            raise ValueError(f"prediction for {qid} is {type(prediction).__name__}, not text")
        exact[qid], f1[qid] = _question_scores(golds, prediction, version)
    if not exact:
        raise ValueError("the dataset holds no questions")
    if missing:
        log.warning("%d of %d questions have no prediction and score 0 (first: %s)",
                    len(missing), len(exact), ", ".join(missing[:5]))

    def percent(qids):
        # Summed in dataset order and scaled like the official scripts, so the floats match.
        return (100.0 * sum(exact[q] for q in qids) / len(qids),
                100.0 * sum(f1[q] for q in qids) / len(qids))

    result: dict[str, Any] = dict(zip(("exact_match", "f1"), percent(list(exact))))
    if version == "2.0":
        result["total"] = len(exact)
        for prefix, want in (("HasAns", True), ("NoAns", False)):
            qids = [q for q, h in has_ans.items() if h == want]
            if qids:
                result[f"{prefix}_exact"], result[f"{prefix}_f1"] = percent(qids)
                result[f"{prefix}_total"] = len(qids)
    return result


# ----------------------------------------------------------------------- featurization


@dataclasses.dataclass
class Features:
    """Windows over (question, context) pairs; F windows of length L.

    `start_positions`/`end_positions` index the answer's first/last token in the window,
    or 0 (the `<s>` token) when the example is unanswerable or its answer is not wholly
    inside this window; `is_impossible` is 1 exactly then (the v2.0 answerable target).
    `offsets[f, t]` is the (start, end) character span of token t in its context, (-1, -1)
    for question, special and padding tokens. `max_context[f, t]` marks the window in which
    a context token has the most context on both sides (BERT's rule); decoding only starts
    answers there, so overlapping windows do not propose the same span twice.
    """

    input_ids: np.ndarray         # [F, L] int32
    attention_mask: np.ndarray    # [F, L] int32
    start_positions: np.ndarray   # [F] int32
    end_positions: np.ndarray     # [F] int32
    is_impossible: np.ndarray     # [F] int32
    example_index: np.ndarray     # [F] int32, into example_ids / contexts
    offsets: np.ndarray           # [F, L, 2] int32
    max_context: np.ndarray       # [F, L] bool
    example_ids: list[str]        # per example
    contexts: list[str]           # per example
    question_truncated: list[bool] = dataclasses.field(default_factory=list)  # per example:
    # longer than max_query_length tokens (kept its first ones)

    def __len__(self) -> int:
        return len(self.input_ids)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays a model and its loss consume, by name."""
        return {k: getattr(self, k) for k in
                ("input_ids", "attention_mask", "start_positions", "end_positions", "is_impossible")}


def _windows(n: int, size: int, stride: int) -> list[tuple[int, int]]:
    """(start, length) of windows over n tokens, each start `stride` after the last (BERT)."""
    spans, start = [], 0
    while True:
        length = min(size, n - start)
        spans.append((start, length))
        if start + length >= n:
            return spans
        start += min(length, stride)


def featurize(examples: Sequence[Example], tokenizer, max_length: int = 384,
              doc_stride: int = 128, max_query_length: int = 64) -> Features:
    """Encode examples as `<s> question </s></s> context-window </s>`, padded to max_length.

    The question, without leading whitespace, keeps its first `max_query_length` tokens.
    The context is cut into windows of at most `max_length - len(question) - 4` tokens,
    each starting `doc_stride` tokens after the previous one (BERT's doc_stride: the step
    between windows, not their overlap). Training uses the first gold answer. A gold answer that
    is not at its `answer_start` in the context raises ValueError.
    """
    bos, eos, pad_id = tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id
    rows, starts, ends, ex_index, offsets, best, cut = [], [], [], [], [], [], []
    encoded: dict[str, tuple[list[int], np.ndarray]] = {}  # paragraphs repeat per question
    for e, ex in enumerate(examples):
        if ex.context not in encoded:
            ids, offs = tokenizer.encode_with_offsets(ex.context)
            encoded[ex.context] = (list(ids), np.asarray(offs, np.int32).reshape(-1, 2))
        ctx_ids, ctx_offs = encoded[ex.context]
        # Some questions start with spaces (ten in dev-v1.1): a byte-level BPE would spend a
        # token on them, so they are dropped, as Hugging Face's run_qa.py does.
        query = list(tokenizer.encode_plain(ex.question.lstrip()))
        cut.append(len(query) > max_query_length)
        query = query[:max_query_length]
        size = max_length - len(query) - 4
        if size < 1:
            raise ValueError(f"max_length {max_length} leaves no room for context after a "
                             f"{len(query)}-token question")
        tok_start = tok_end = None
        if ex.answers and not ex.is_impossible:
            char_start = ex.answer_starts[0]
            char_end = char_start + len(ex.answers[0])
            if ex.context[char_start:char_end] != ex.answers[0]:
                raise ValueError(f"SQuAD example {ex.id}: answer {ex.answers[0]!r} is not at "
                                 f"character {char_start} of its context")
            # First token ending after the answer starts, last token starting before it ends:
            # right whether or not a token's span includes its leading space.
            tok_start = int(np.searchsorted(ctx_offs[:, 1], char_start, side="right"))
            tok_end = int(np.searchsorted(ctx_offs[:, 0], char_end, side="left")) - 1
        spans = _windows(len(ctx_ids), size, doc_stride)
        # BERT's max-context score of token p in span (s, n): min(left, right) context + 0.01 n.
        pos = np.arange(len(ctx_ids))
        scores = np.stack([np.where((pos >= s) & (pos < s + n),
                                    np.minimum(pos - s, s + n - 1 - pos) + 0.01 * n, -np.inf)
                           for s, n in spans])  # [spans, tokens]
        owner = scores.argmax(axis=0)  # first best span on ties, as BERT
        first = len(query) + 3  # window position of the first context token
        for w, (s, n) in enumerate(spans):
            rows.append([bos, *query, eos, eos, *ctx_ids[s:s + n], eos])
            off = np.full((max_length, 2), -1, np.int32)
            off[first:first + n] = ctx_offs[s:s + n]
            mc = np.zeros(max_length, bool)
            mc[first:first + n] = owner[s:s + n] == w
            inside = tok_start is not None and s <= tok_start and tok_end <= s + n - 1
            starts.append(first + tok_start - s if inside else 0)
            ends.append(first + tok_end - s if inside else 0)
            ex_index.append(e)
            offsets.append(off)
            best.append(mc)
    ids = np.full((len(rows), max_length), pad_id, np.int32)
    mask = np.zeros((len(rows), max_length), np.int32)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    starts = np.asarray(starts, np.int32)
    return Features(
        ids, mask, starts, np.asarray(ends, np.int32), (starts == 0).astype(np.int32),
        np.asarray(ex_index, np.int32),
        np.stack(offsets) if offsets else np.zeros((0, max_length, 2), np.int32),
        np.stack(best) if best else np.zeros((0, max_length), bool),
        [ex.id for ex in examples], [ex.context for ex in examples], cut)


# ---------------------------------------------------------------------------- decoding


@dataclasses.dataclass(frozen=True)
class Span:
    """An example's best answer span: its text, character offsets in the context
    (`context[start:end] == text`) and score (start + end logit); no valid span: "", -1, -1,
    -inf."""
    text: str
    start: int
    end: int
    score: float


def best_spans(start_logits, end_logits, features: Features, n_best: int = 20,
               max_answer_length: int = 30) -> list[Span]:
    """Each example's best span over its windows (BERT's n-best search, as `decode`)."""
    start_logits = np.asarray(start_logits, np.float64)
    end_logits = np.asarray(end_logits, np.float64)
    if start_logits.shape != features.input_ids.shape or end_logits.shape != start_logits.shape:
        raise ValueError(f"logits of shape {start_logits.shape} / {end_logits.shape} do not "
                         f"match features {features.input_ids.shape}")
    k = min(n_best, start_logits.shape[1])
    best = [Span("", -1, -1, -np.inf) for _ in features.example_ids]
    for f in range(len(features)):
        e = int(features.example_index[f])
        s_log, e_log, off = start_logits[f], end_logits[f], features.offsets[f]
        si = np.argsort(-s_log, kind="stable")[:k]  # ties keep the earlier token
        ei = np.argsort(-e_log, kind="stable")[:k]
        score = s_log[si][:, None] + e_log[ei][None, :]  # [k, k]
        length = ei[None, :] - si[:, None] + 1
        valid = ((off[si, 0] >= 0) & features.max_context[f, si])[:, None] \
            & (off[ei, 0] >= 0)[None, :] & (length >= 1) & (length <= max_answer_length)
        if not valid.any():
            continue
        score = np.where(valid, score, -np.inf)
        a, b = np.unravel_index(np.argmax(score), score.shape)
        if score[a, b] > best[e].score:
            start, end = int(off[si[a], 0]), int(off[ei[b], 1])
            raw = features.contexts[e][start:end]
            start += len(raw) - len(raw.lstrip())  # a token's span may hold its leading space
            text = raw.strip()
            best[e] = Span(text, start, start + len(text), float(score[a, b]))
    return best


def null_scores(start_logits, end_logits, features: Features) -> np.ndarray:
    """[examples] the no-answer score: the smallest `<s>` start + end logit over the windows."""
    s = np.asarray(start_logits, np.float64)[:, 0] + np.asarray(end_logits, np.float64)[:, 0]
    null = np.full(len(features.example_ids), np.inf)
    np.minimum.at(null, features.example_index, s)
    return null


def no_answer_margins(answerable_logits, features: Features) -> np.ndarray:
    """[examples] SQuAD v2.0's no-answer score from the answerable classifier's window logits
    [F, 2] (no, yes): a window is answerable when it holds the answer, a question when any of
    its windows is, so the score is the smallest logit(no) - logit(yes) over its windows."""
    a = np.asarray(answerable_logits, np.float64)
    null = np.full(len(features.example_ids), np.inf)
    np.minimum.at(null, features.example_index, a[:, 0] - a[:, 1])
    return null


def decode(start_logits, end_logits, features: Features, n_best: int = 20,
           max_answer_length: int = 30, null_threshold: float = 0.0,
           version: str = "1.1") -> dict[str, str]:
    """Answer text per example id from window logits [F, L] (BERT's n-best decoding).

    Per window, the `n_best` highest start and end logits form candidate spans; a span
    is kept when both ends lie in the context, end >= start, it is at most
    `max_answer_length` tokens and its start is in its max-context window. The best
    span score (start + end logit) over an example's windows gives the answer. v2.0
    answers "" when the no-answer score — the smallest `<s>` start + end logit over the
    windows — beats the best span by more than `null_threshold`, or when no span is valid
    (v1.1 then also answers "").
    """
    version = _version(version)
    spans = best_spans(start_logits, end_logits, features, n_best, max_answer_length)
    null = null_scores(start_logits, end_logits, features) if version == "2.0" else None
    predictions = {}
    for e, (qid, span) in enumerate(zip(features.example_ids, spans)):
        text = span.text
        if null is not None and (span.score == -np.inf
                                 or null[e] - span.score > null_threshold):
            text = ""
        predictions[qid] = text
    return predictions
