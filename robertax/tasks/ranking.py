"""QNLI's pairwise ranking formulation (Liu et al., 2019, Section 5.1).

QNLI pairs a question with one candidate sentence of its Wikipedia paragraph; the rows that
share a question are its candidates, and of a question with two or more, exactly one holds
the answer (all 1,362 such questions of GLUE's dev file). Leaderboard submissions rank each
question's candidates against one another and call the top one "entailment"; the paper does
so for its test submission and reports dev results without it, for comparison with BERT.

  * `rank_by_question`  the prediction: class ids from a classifier's logits, ranked by question
  * `question_groups`   group ids of rows (one per question text) and the rows to rank in training
  * `train_order`       an epoch's row order that keeps each question's rows in one microbatch
  * `loss_sums`         the listwise ranking term: -log softmax over a question's candidates of
                        the entailment log-odds, at its answer (config.ranking_loss weighs it)

The score of a candidate is its entailment log-odds, logit[entailment] - logit[not_entailment]
(for an ensemble's averaged log-probabilities, the log-odds of the mean probability).
"""

from __future__ import annotations

import collections
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

YES, NO = "entailment", "not_entailment"


def _log_odds(logits, labels: Sequence[str]):
    if YES not in labels or NO not in labels:
        raise ValueError(f"ranking needs the classes {YES!r} and {NO!r}; got {list(labels)}")
    return logits[:, list(labels).index(YES)] - logits[:, list(labels).index(NO)]


def rank_by_question(labels: Sequence[str], logits, questions: Sequence[str]) -> np.ndarray:
    """Class ids [N] (in `labels`' order) for rows of logits [N, 2]: within each question of two
    or more rows the one with the highest entailment log-odds is "entailment", the others
    "not_entailment" (a tie goes to the first row); a question of one row keeps the argmax."""
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or logits.shape[1] != len(labels):
        raise ValueError(f"expected logits [N, {len(labels)}], got {logits.shape}")
    if len(questions) != len(logits):
        raise ValueError(f"{len(logits)} rows of logits for {len(questions)} questions")
    odds = _log_odds(logits, labels)
    yes, no = list(labels).index(YES), list(labels).index(NO)
    ids = logits.argmax(-1)
    group, _ = question_groups(questions)
    for rows in _members(group):
        if len(rows) > 1:
            ids[rows] = no
            ids[rows[int(np.argmax(odds[rows]))]] = yes
    return ids


def question_groups(questions: Sequence[str], is_answer: Sequence[bool] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(group [N] int32: one id per question text, in order of first appearance;
    rankable [N] float32: 1 on the answer row of each question of two or more rows with exactly
    one answer, the rows the ranking loss counts; zeros without `is_answer`)."""
    ids: dict[str, int] = {}
    group = np.array([ids.setdefault(q, len(ids)) for q in questions], np.int32)
    rankable = np.zeros(len(group), np.float32)
    if is_answer is not None:
        answer = np.asarray(is_answer, bool)
        for rows in _members(group):
            if len(rows) > 1 and answer[rows].sum() == 1:
                rankable[rows[answer[rows]]] = 1.0
    return group, rankable


def _members(group: np.ndarray) -> list[np.ndarray]:
    """Row indices of each group id, ascending, in order of the ids."""
    order = np.argsort(group, kind="stable")
    cuts = np.flatnonzero(np.diff(group[order])) + 1
    return np.split(order, cuts) if len(order) else []


def train_order(group: np.ndarray, unit: int, seed: int, epoch: int) -> tuple[np.ndarray, int]:
    """A permutation of the rows for one epoch (drawn from (seed, epoch)) in which each
    question's rows lie in one chunk of `unit` rows (the microbatch the loss sees), so that
    they can be ranked together; returns (order, questions split across two chunks).

    Questions come in a shuffled order; one that does not fit the room left in the chunk waits
    and the room is filled with the next questions that fit (QNLI has many of one row), the
    longest-waiting first, so every chunk but the last is full and an epoch takes as many
    steps as a plain shuffle. A question is split only when nothing fits the room left (or it
    is longer than `unit`)."""
    rng = np.random.default_rng([seed, epoch])
    groups = [rows[rng.permutation(len(rows))] for rows in _members(np.asarray(group))]
    stream = iter(enumerate(groups[i] for i in rng.permutation(len(groups))))
    waiting: dict[int, collections.deque] = {}  # size -> (position, rows), oldest first
    order, room, split = [], unit, 0

    def oldest(sizes):
        heads = [waiting[k][0] for k in sizes if waiting.get(k)]
        return min(heads, key=lambda h: h[0])[1] if heads else None

    while True:
        rows = oldest(k for k in waiting if k <= room)
        if rows is None:
            for pos, rows in stream:
                if len(rows) <= room:
                    break
                waiting.setdefault(len(rows), collections.deque()).append((pos, rows))
            else:  # the stream is spent and nothing waiting fits: split the oldest
                rows = oldest(list(waiting))
                if rows is None:
                    break
                split += 1
                waiting[len(rows)].popleft()
        else:
            waiting[len(rows)].popleft()
        order.extend(rows.tolist())
        room = unit - (unit - room + len(rows)) % unit
    return np.asarray(order, np.int64), split


def loss_sums(logits, labels: Sequence[str], batch: dict):
    """Summed listwise ranking loss of the rows `batch["rankable"]` marks (each the answer of
    its question): logsumexp over its question's rows in this batch of the entailment log-odds,
    minus its own. Rows of weight 0 (padding) are not candidates."""
    odds = _log_odds(logits.astype(jnp.float32), labels)
    w, g = batch["weight"], batch["group"]
    # [B, B]: row i's candidates, itself included (so that every row's logsumexp is finite)
    same = ((g[:, None] == g[None, :]) & (w[None, :] > 0)) | jnp.eye(len(g), dtype=bool)
    loss = jax.nn.logsumexp(jnp.where(same, odds[None, :], -jnp.inf), axis=-1) - odds
    return (loss * batch["rankable"] * w).sum()
