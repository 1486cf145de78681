"""RACE (multiple-choice reading comprehension): readers and featurization.

  * `read_dir(race_dir, split)` reads RACE's own release, `RACE/{train,dev,test}/{high,middle}/
    *.txt`, each file one JSON passage with its questions, four options each and answers A-D.
  * `read_tfds(level, split)` reads TFDS `race/high` or `race/middle` (prepared beforehand).
  * `featurize(examples, tokenizer)` encodes each of the four (passage, question + option)
    pairs separately as `<s> passage </s></s> question option </s>` → input_ids [N, 4, L].

Text is prepared as fairseq's RACE preprocessing (examples/roberta/preprocess_RACE.py)
does: the passage has newlines and runs of whitespace collapsed to one space, and a
question with a blank ("_") gets the option written into the blank instead of appended.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from robertax.data import tfds_source

NUM_CHOICES = 4
LEVELS = ("high", "middle")
_SPLITS = {"train": "train", "dev": "dev", "validation": "dev", "test": "test"}


@dataclasses.dataclass(frozen=True)
class Example:
    id: str                   # "<file id>-<question number>", e.g. "high80.txt-2"
    article: str
    question: str
    options: tuple[str, ...]  # four
    label: int                # 0-3 for A-D


def _examples(record: dict, source: str) -> list[Example]:
    """The questions of one RACE passage record, validated."""
    try:
        article, questions = record["article"], record["questions"]
        options, answers = record["options"], record["answers"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{source}: not a RACE passage, missing {e}") from None
    if not (len(questions) == len(options) == len(answers)):
        raise ValueError(f"{source}: {len(questions)} questions, {len(options)} option lists "
                         f"and {len(answers)} answers; they must match")
    base = str(record.get("id") or record.get("example_id") or source)
    out = []
    for i, (q, opts, ans) in enumerate(zip(questions, options, answers)):
        if len(opts) != NUM_CHOICES:
            raise ValueError(f"{source}: question {i} has {len(opts)} options, "
                             f"expected {NUM_CHOICES}")
        if ans not in ("A", "B", "C", "D"):
            raise ValueError(f"{source}: question {i} has answer {ans!r}, expected A-D")
        out.append(Example(f"{base}-{i}", article, q, tuple(opts), ord(ans) - ord("A")))
    return out


def read_dir(race_dir: str | os.PathLike, split: str,
             levels: Sequence[str] = LEVELS) -> list[Example]:
    """Questions of one split ("train", "dev" or "validation", "test") of a RACE folder.

    `race_dir` is the folder holding train/dev/test (RACE/ in the release). Files are read
    in numeric order of their names, high before middle (the `levels` order), so the
    example order is the same on every machine.
    """
    if split not in _SPLITS:
        raise ValueError(f"unknown RACE split {split!r}; use one of {', '.join(_SPLITS)}")
    examples = []
    for level in levels:
        if level not in LEVELS:
            raise ValueError(f"unknown RACE level {level!r}; use {LEVELS}")
        folder = Path(race_dir) / _SPLITS[split] / level
        if not folder.is_dir():
            raise FileNotFoundError(f"no RACE folder {folder}")
        paths = sorted(folder.glob("*.txt"), key=lambda p: (len(p.stem), p.stem))
        for path in paths:
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
            if isinstance(record, dict) and "id" not in record:
                record["id"] = f"{level}{path.name}"  # the release's own id scheme
            examples.extend(_examples(record, str(path)))
    return examples


def read_tfds(level: str = "high", split: str = "test", data_dir: str | None = None) -> list[Example]:
    """Questions of TFDS `race/high` or `race/middle` (already prepared; never downloads). Its
    splits are named as the release's folders: train, dev, test."""
    if level not in LEVELS:
        raise ValueError(f"TFDS race has the configs {LEVELS}, not {level!r}")
    name = f"race/{level}"
    text = tfds_source.text
    examples = []
    for i, r in enumerate(tfds_source.records(tfds_source.open_source(name, split, data_dir))):
        record = {"id": text(r["example_id"]), "article": text(r["article"]),
                  "questions": [text(q) for q in r["questions"]],
                  "options": [[text(o) for o in opts] for opts in r["options"]],
                  "answers": [text(a) for a in r["answers"]]}
        examples.extend(_examples(record, f"{name} {split} record {i}"))
    return examples


def question_option(question: str, option: str) -> str:
    """The question with the option written into its blank ("_"), else appended.

    As fairseq's preprocess_RACE.py: every "_" is replaced, whitespace runs collapse.
    """
    text = question.replace("_", option) if "_" in question else f"{question} {option}"
    return re.sub(r"\s+", " ", text).strip()


def clean_article(article: str) -> str:
    """Newlines and whitespace runs become single spaces (fairseq's preprocess_RACE.py)."""
    return re.sub(r"\s+", " ", article).strip()


def featurize(examples: Iterable[Example], tokenizer, max_length: int = 512,
              max_option_length: int = 128, pad_to_longest: bool = False) -> dict[str, np.ndarray]:
    """Encode each example's four choices as `<s> passage </s></s> question option </s>`.

    The question+option text keeps its first `max_option_length` tokens (fairseq's
    --max-option-length, the paper's 128); the passage is then cut at the end so the
    whole row fits in `max_length` (512) tokens. Returns `input_ids` [N, 4, L] int32
    padded with the pad id (1), `attention_mask` [N, 4, L] int32 and `labels` [N] int32
    (A-D → 0-3). L is max_length, or the longest row with `pad_to_longest=True`.
    """
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    if max_length < max_option_length + 5:
        raise ValueError(f"max_length {max_length} must exceed max_option_length "
                         f"{max_option_length} by at least 5 (4 special tokens + passage)")
    rows, labels = [], []
    for ex in examples:
        passage = tokenizer.encode_plain(clean_article(ex.article))
        for option in ex.options:
            qa = tokenizer.encode_plain(question_option(ex.question, option))[:max_option_length]
            keep = max_length - len(qa) - 4
            rows.append([bos, *passage[:keep], eos, eos, *qa, eos])
        labels.append(ex.label)
    n = len(labels)
    length = max((len(r) for r in rows), default=0) if pad_to_longest else max_length
    ids = np.full((n * NUM_CHOICES, length), tokenizer.pad_id, np.int32)
    mask = np.zeros((n * NUM_CHOICES, length), np.int32)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return {"input_ids": ids.reshape(n, NUM_CHOICES, length),
            "attention_mask": mask.reshape(n, NUM_CHOICES, length),
            "labels": np.asarray(labels, np.int32)}
