"""Winograd schemas the paper's way (Liu et al., 2019, Section 5.1): WNLI (and SuperGLUE's WSC)
scored by the pretrained masked LM instead of a classifier.

A schema is a text, one pronoun in it and a candidate referent: does the pronoun refer to the
candidate? GLUE's WNLI asks it as NLI, the hypothesis repeating part of the sentence with the
pronoun replaced by the candidate; SuperGLUE's WSC gives the pronoun's and the candidate's
spans. The paper replaces the pronoun by each candidate with the candidate's tokens masked, and
scores a candidate by the mean log-probability the masked LM gives its tokens there; the
schema's candidate is the referent when it scores at least as high as every other candidate
for that pronoun. Training uses only the schemas whose candidate is the referent: a margin
ranking loss (Kocijan et al., 2019) or, fairseq's later choice, cross-entropy over the
candidates. The paper mines the other candidates with spaCy's noun chunks; here they are the
other referents the data itself names for the same pronoun of the same text (WNLI names two
for most: 595 of its 615 train rows that align get another), from every split read, inputs
only, never labels.

  * `align`            the pronoun's span and the candidate of one WNLI row, or why there are none
  * `read_wnli`        a GLUE WNLI file as schemas (rows that do not align kept, marked)
  * `read_superglue`   SuperGLUE WSC's jsonl as schemas
  * `candidates`       each schema's other candidates
  * `featurize`        model inputs [N, C, 2, L] for `model.RobertaForCandidateScoring`
  * `predict`, `loss_sums`   the decision and the two training losses on its scores [N, C]
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robertax.model import NO_CANDIDATE
from robertax.tasks import glue

PRONOUNS = frozenset("he she it they him her them his its their hers theirs himself herself "
                     "itself themselves".split())
_EDGE = ".,!?;:\"'()"     # punctuation that may cling to a word
_DETERMINERS = frozenset("the a an this that these those my your his her its our their".split())
MAX_CANDIDATE_WORDS = 6   # a longer "replacement" means the hypothesis rewrote more than that


@dataclasses.dataclass(frozen=True)
class Schema:
    idx: int | str       # the row's index (WNLI) or idx (WSC)
    text: str
    start: int           # the pronoun is text[start:end] (-1, -1 when `problem`)
    end: int
    candidate: str       # the referent this row proposes for the pronoun
    label: int | None    # 1: it is the referent, 0: it is not, None: unlabelled (test)
    problem: str = ""    # why the row cannot be scored ("" when it can); predicted 0


def _words(text: str) -> list[tuple[str, int, int]]:
    return [(m.group(), m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def _norm(word: str) -> str:
    return word.strip(_EDGE).lower()


def align(sentence: str, hypothesis: str) -> tuple[int, int, str]:
    """(start, end, candidate) for a WNLI pair: `sentence[start:end]` is the pronoun that
    `hypothesis` replaces by `candidate`. The hypothesis is a stretch of the sentence (often a
    clause) with one pronoun replaced: the pronoun chosen is the one whose surrounding words
    the hypothesis repeats most (its start before, its end after, compared without case and
    clinging punctuation). Raises ValueError saying why when no pronoun fits."""
    A, B = _words(sentence), hypothesis.split()
    nA, nB = [_norm(w) for w, _, _ in A], [_norm(w) for w in B]
    best = None  # (words matched, pronoun index, matched before, matched after)
    for i, w in enumerate(nA):
        if w not in PRONOUNS:
            continue
        after = next((k for k in range(min(len(A) - i - 1, len(B) - 1), 0, -1)
                      if nA[i + 1:i + 1 + k] == nB[len(B) - k:]), 0)
        before = next((k for k in range(min(i, len(B) - 1 - after), 0, -1)
                       if nA[i - k:i] == nB[:k]), 0)
        if before + after > (best[0] if best else 0):
            best = (before + after, i, before, after)
    if best is None:
        raise ValueError("the hypothesis repeats no words around any pronoun of the sentence")
    _, i, before, after = best
    words = B[before:len(B) - after]
    if len(words) > MAX_CANDIDATE_WORDS:
        raise ValueError(f"the pronoun {A[i][0]!r} would be replaced by {len(words)} words: the "
                         "hypothesis rewrites more than the pronoun")
    word, ws, we = A[i]
    start = ws + len(word) - len(word.lstrip(_EDGE))
    end = we - (len(word) - len(word.rstrip(_EDGE)))
    candidate = " ".join(words).strip(".,!?;:\"()")
    if not candidate:
        raise ValueError(f"the pronoun {A[i][0]!r} is replaced by punctuation only")
    # A candidate that opened the hypothesis has its first word capitalized there ("The carrot
    # had a hole."); in a lower-case pronoun's place it is lower-cased when that word is a
    # determiner or the sentence writes it in lower case elsewhere, so names keep their capital.
    first = candidate.split()[0]
    if (before == 0 and sentence[start].islower() and first[0].isupper()
            and (first.lower() in _DETERMINERS
                 or first.lower() in {w.strip(_EDGE) for w, _, _ in A})):
        candidate = candidate[0].lower() + candidate[1:]
    return start, end, candidate


def read_wnli(path, labelled: bool = True) -> list[Schema]:
    """A GLUE WNLI TSV (train/dev, or test with `labelled=False`) as one schema per row, in
    file order; a row that does not align (`align`'s reason in `problem`) is kept, so that the
    predictions cover the file."""
    out = []
    for ex in glue.read_tsv_file("WNLI", path, labelled=labelled):
        label = None if ex.label is None else int(glue.TASKS["WNLI"].labels[ex.label])
        try:
            start, end, cand = align(ex.text_a, ex.text_b)
            out.append(Schema(ex.idx, ex.text_a, start, end, cand, label))
        except ValueError as e:
            out.append(Schema(ex.idx, ex.text_a, -1, -1, ex.text_b, label, problem=str(e)))
    return out


def read_superglue(path, labelled: bool = True) -> list[Schema]:
    """SuperGLUE WSC's jsonl ({"idx", "text", "target": {"span1_text", "span2_index",
    "span2_text", ...}, "label"}) as schemas: span2 is the pronoun (its index counts the text's
    space-separated words; where the file's index is one short, the next word is taken, as
    fairseq does), span1 the candidate, its trailing '.' or ',' removed. A candidate across
    lines is kept as a problem row. Malformed lines raise ValueError naming file and line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
                text, target = row["text"], row["target"]
                cand, index, pronoun = (target["span1_text"], int(target["span2_index"]),
                                        target["span2_text"].strip(_EDGE))
                label = (int(bool(row["label"])) if labelled else None)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{where}: not a WSC record ({type(e).__name__}: {e})") from None
            words = text.split(" ")
            hits = [k for k in (index, index + 1)
                    if k < len(words) and words[k].strip(_EDGE).lower() == pronoun.lower()]
            if not hits:
                found = repr(words[index]) if index < len(words) else "past the end"
                raise ValueError(f"{where}: span2_text {pronoun!r} is not word {index} of the "
                                 f"text ({found})")
            word = words[hits[0]]
            start = sum(len(w) + 1 for w in words[:hits[0]]) + len(word) - len(word.lstrip(_EDGE))
            cand = cand[:-1] if cand.endswith((".", ",")) else cand
            idx = row.get("idx", line_no - 1)
            problem = "the candidate spans lines" if "\n" in cand else ""
            out.append(Schema(idx, text, start, start + len(pronoun), cand, label, problem))
    return out


def candidates(schemas: Sequence[Schema], pool: Sequence[Schema] = ()) -> list[list[str]]:
    """For each schema, the other candidates for its pronoun: the distinct candidates (ignoring
    case) of every schema in `schemas` and `pool` on the same text and pronoun, without those
    that contain its own candidate or are contained in it (fairseq's filter of mined noun
    phrases). Empty for problem rows."""
    named: dict[tuple[str, int], dict[str, str]] = {}
    for s in (*pool, *schemas):
        if not s.problem:
            named.setdefault((s.text, s.start), {}).setdefault(s.candidate.lower(), s.candidate)
    out = []
    for s in schemas:
        own = s.candidate.lower()
        out.append([] if s.problem else [
            c for low, c in named[(s.text, s.start)].items() if own not in low and low not in own])
    return out


def featurize(schemas: Sequence[Schema], others: Sequence[Sequence[str]], tokenizer,
              max_length: int = 512) -> dict[str, np.ndarray]:
    """`input_ids` [N, C, 2, L] and `attention_mask` [N, C, L] int32 for
    `model.RobertaForCandidateScoring` (column 0 the schema's own candidate, then its others;
    padding columns all <pad>), `labels` [N] int32 (-1 unlabelled) and `scorable` [N] float32
    (0 for problem rows). Each text is `<s> text </s>` with the pronoun replaced by the
    candidate, encoded as pieces in turn (the text before, the candidate, the text after), so
    that the candidate's tokens are known; a row past max_length loses the end of its text,
    and raises ValueError if the candidate would."""
    C = 1 + max((len(o) for o in others), default=0)
    ids = np.full((len(schemas), C, 2, max_length), tokenizer.pad_id, np.int32)
    mask = np.zeros((len(schemas), C, max_length), np.int32)
    for n, (s, rest) in enumerate(zip(schemas, others)):
        if s.problem:
            continue
        head = s.text[:s.start].rstrip()
        space = " " if head != s.text[:s.start] else ""
        before = tokenizer.encode_plain(head) if head else []
        after = s.text[s.end:]
        after = tokenizer.encode_plain(tokenizer.continuation(after)) if after else []
        for j, cand in enumerate([s.candidate, *rest]):
            middle = tokenizer.encode_plain(tokenizer.continuation(space + cand) if head
                                            else cand)
            lo, hi = 1 + len(before), 1 + len(before) + len(middle)
            if hi + 1 > max_length:
                raise ValueError(f"schema {s.idx}: the candidate {cand!r} ends at token {hi + 1}, "
                                 f"past max_length {max_length}")
            row = [tokenizer.bos_id, *before, *middle, *after][:max_length - 1]
            row.append(tokenizer.eos_id)
            ids[n, j, 0, :len(row)] = row
            ids[n, j, 0, lo:hi] = tokenizer.mask_id
            ids[n, j, 1, lo:hi] = middle
            mask[n, j, :len(row)] = 1
    labels = np.array([-1 if s.label is None else s.label for s in schemas], np.int32)
    scorable = np.array([0.0 if s.problem else 1.0 for s in schemas], np.float32)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "scorable": scorable}


def predict(scores, scorable) -> np.ndarray:
    """Labels [N] (1: the schema's candidate is the referent) from scores [N, C]: its candidate
    (column 0) scores at least as high as each other one (1 when there is none, as fairseq);
    problem rows get 0."""
    scores = np.asarray(scores, np.float64)
    best_other = scores[:, 1:].max(-1, initial=NO_CANDIDATE)
    return ((scores[:, 0] >= best_other) & (np.asarray(scorable) > 0)).astype(np.int32)


def loss_sums(scores, batch: dict, loss: str, alpha: float = 0.0, beta: float = 0.0):
    """Summed training loss over the batch's scorable schemas whose candidate is the referent
    (label 1; the others add nothing but are counted, as in fairseq): "cross_entropy",
    -log softmax over its candidates at its own; "margin", Kocijan et al.'s
    -s + alpha * sum over the other candidates c of max(0, c - s + beta)."""
    scores = scores.astype(jnp.float32)
    own = scores[:, 0]
    if loss == "cross_entropy":
        per = jax.nn.logsumexp(scores, axis=-1) - own
    elif loss == "margin":
        others = scores[:, 1:]
        hinge = jnp.where(others > NO_CANDIDATE / 2,
                          jax.nn.relu(others - own[:, None] + beta), 0.0)
        per = -own + alpha * hinge.sum(-1)
    else:
        raise ValueError(f"WSC loss must be 'cross_entropy' or 'margin', got {loss!r}")
    keep = (batch["labels"] == 1) * batch["scorable"] * batch["weight"]
    return (per * keep).sum()
