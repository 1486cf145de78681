"""GLUE: the nine tasks as one table, readers, featurization, metrics and submission files.

Sources of examples:
  * `read_tsv(task, glue_dir, split)` — the standard GLUE folders written by
    `download_glue_data.py` (`<glue_dir>/<Task>/{train,dev,test}.tsv`, MNLI's
    `dev_matched.tsv` etc., the diagnostic set in `<glue_dir>/diagnostic/diagnostic.tsv`).
  * `read_tfds(task, split)` — TFDS `glue/<config>`, prepared beforehand (never downloads).

Both yield `Example(idx, text_a, text_b, label)` with the label as an index into
`task.labels` (the label strings of the TSV files), a float for STS-B, or None for test
splits. Splits are named as in TFDS: "train", "validation" ("validation_matched" /
"validation_mismatched" for MNLI), "test" ("test_matched" / "test_mismatched").

MNLI's class order is (contradiction, neutral, entailment), the order of fairseq's and
Hugging Face's roberta-large-mnli heads, so a converted MNLI head predicts our ids.

`compute_metrics` scores one split at a time; MNLI's matched and mismatched dev sets
are two calls, each returning `{"accuracy": ...}` — the caller names them.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from robertax.data import tfds_source
from robertax.tasks import metrics as _metrics


@dataclasses.dataclass(frozen=True)
class Task:
    """One GLUE task: where its text and labels live and how it is scored."""

    name: str                          # GLUE's spelling, also the folder name
    text_a: str                        # TSV column of the first text
    text_b: str | None                 # TSV column of the second text (None: single sentence)
    label: str | None                  # TSV column of the label (None: test-only task, AX)
    labels: tuple[str, ...] | None     # label strings; class id = position. None: regression
    metrics: tuple[str, ...]           # names as in DESIGN.md / results.json
    files: dict[str, str]              # split -> file name inside the task folder
    submission: dict[str, str]         # test split -> leaderboard file name
    tfds_config: str                   # glue/<tfds_config>
    tfds_text: tuple[str, str | None]  # TFDS feature names of text_a, text_b
    tfds_labels: tuple[str, ...] | None = None  # TFDS ClassLabel order, as our label strings
    columns: tuple[str, ...] | None = None      # names for header-less train/dev files (CoLA)
    index_column: str = "index"        # id column of the test files
    folder: str | None = None          # folder name when it differs from `name`
    score_range: tuple[float, float] | None = None  # regression: the scale's bounds (STS-B 0-5)

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def dev_splits(self) -> tuple[str, ...]:
        return tuple(s for s in self.files if s.startswith("validation"))

    @property
    def test_splits(self) -> tuple[str, ...]:
        return tuple(s for s in self.files if s.startswith("test"))


_BINARY = ("0", "1")
_NLI3 = ("contradiction", "neutral", "entailment")
_NLI2 = ("entailment", "not_entailment")
_STANDARD_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}

TASKS: dict[str, Task] = {t.name: t for t in [
    Task("CoLA", "sentence", None, "label", _BINARY, ("mcc",), _STANDARD_FILES,
         {"test": "CoLA.tsv"}, "cola", ("sentence", None), _BINARY,
         columns=("source", "label", "author_label", "sentence")),
    Task("SST-2", "sentence", None, "label", _BINARY, ("accuracy",), _STANDARD_FILES,
         {"test": "SST-2.tsv"}, "sst2", ("sentence", None), _BINARY),
    Task("MRPC", "#1 String", "#2 String", "Quality", _BINARY, ("f1", "accuracy"),
         _STANDARD_FILES, {"test": "MRPC.tsv"}, "mrpc", ("sentence1", "sentence2"), _BINARY),
    Task("STS-B", "sentence1", "sentence2", "score", None, ("pearson", "spearman"),
         _STANDARD_FILES, {"test": "STS-B.tsv"}, "stsb", ("sentence1", "sentence2"),
         score_range=(0.0, 5.0)),
    Task("QQP", "question1", "question2", "is_duplicate", _BINARY, ("accuracy", "f1"),
         _STANDARD_FILES, {"test": "QQP.tsv"}, "qqp", ("question1", "question2"), _BINARY,
         index_column="id"),
    Task("MNLI", "sentence1", "sentence2", "gold_label", _NLI3, ("accuracy",),
         {"train": "train.tsv", "validation_matched": "dev_matched.tsv",
          "validation_mismatched": "dev_mismatched.tsv", "test_matched": "test_matched.tsv",
          "test_mismatched": "test_mismatched.tsv"},
         {"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"}, "mnli",
         ("premise", "hypothesis"), ("entailment", "neutral", "contradiction")),
    Task("QNLI", "question", "sentence", "label", _NLI2, ("accuracy",), _STANDARD_FILES,
         {"test": "QNLI.tsv"}, "qnli", ("question", "sentence"), _NLI2),
    Task("RTE", "sentence1", "sentence2", "label", _NLI2, ("accuracy",), _STANDARD_FILES,
         {"test": "RTE.tsv"}, "rte", ("sentence1", "sentence2"), _NLI2),
    Task("WNLI", "sentence1", "sentence2", "label", _BINARY, ("accuracy",), _STANDARD_FILES,
         {"test": "WNLI.tsv"}, "wnli", ("sentence1", "sentence2"), _BINARY),
    # The diagnostic set: test only, labelled by the MNLI model, submitted as AX.tsv.
    Task("AX", "sentence1", "sentence2", None, _NLI3, (), {"test": "diagnostic.tsv"},
         {"test": "AX.tsv"}, "ax", ("premise", "hypothesis"),
         ("entailment", "neutral", "contradiction"), folder="diagnostic"),
]}

GLUE_TASKS = ("CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "QNLI", "RTE", "WNLI")

# Spellings people type for the same task (configs, TFDS names).
_ALIASES = {"sst2": "SST-2", "stsb": "STS-B", "sts-b": "STS-B", "sst-2": "SST-2",
            "diagnostic": "AX"}


def get_task(task: str | Task) -> Task:
    """The Task for a name in any common spelling ("SST-2", "sst2", "mnli", ...)."""
    if isinstance(task, Task):
        return task
    key = task.strip()
    lowered = {name.lower(): name for name in TASKS}
    name = _ALIASES.get(key.lower(), lowered.get(key.lower()))
    if name is None:
        raise ValueError(f"unknown GLUE task {task!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


@dataclasses.dataclass(frozen=True)
class Example:
    idx: int                      # the file's index/id column, else the row number from 0
    text_a: str
    text_b: str | None
    label: int | float | None     # class id into task.labels, float for STS-B, None: unlabelled


# ---------------------------------------------------------------------------- readers


def read_tsv(task: str | Task, glue_dir: str | os.PathLike, split: str) -> list[Example]:
    """Examples of one split from a standard GLUE folder (`<glue_dir>/<Task>/<file>`)."""
    task = get_task(task)
    if split not in task.files:
        raise ValueError(f"{task.name} has no split {split!r}; it has {', '.join(task.files)}")
    path = Path(glue_dir) / (task.folder or task.name) / task.files[split]
    return read_tsv_file(task, path, labelled=not split.startswith("test"))


def read_tsv_file(task: str | Task, path: str | os.PathLike, labelled: bool = True) -> list[Example]:
    """Examples of one GLUE TSV file. Malformed rows raise ValueError naming file and line.

    Files are read with csv.QUOTE_NONE, as GLUE's own loaders do: MRPC and STS-B
    contain bare quote characters that are text, not CSV quoting. "utf-8-sig" drops the
    byte-order mark that MRPC's train/dev files start with. Texts are stripped of
    surrounding whitespace (SST-2 sentences end in a space), as fairseq's BPE encoder does.
    """
    task = get_task(task)
    path = Path(path)
    examples = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if labelled and task.columns is not None:
            header = list(task.columns)  # CoLA's train/dev files have no header row
        else:
            header = next(rows, None)
            if header is None:
                raise ValueError(f"{path}: empty file, expected a header row")
        where = {name: i for i, name in enumerate(header)}
        wanted = [task.text_a] + ([task.text_b] if task.text_b else [])
        if labelled:
            if task.label is None:
                raise ValueError(f"{path}: {task.name} has no labelled splits")
            wanted.append(task.label)
        missing = [c for c in wanted if c not in where]
        if missing:
            raise ValueError(f"{path}:1: header lacks column(s) {missing} of {task.name}; "
                             f"found {header}")
        for row in rows:
            line = rows.line_num
            if not row:
                continue  # a blank line (e.g. a trailing one) holds no example
            if len(row) != len(header):
                raise ValueError(f"{path}:{line}: expected {len(header)} tab-separated "
                                 f"columns, found {len(row)}")
            label = _parse_label(task, row[where[task.label]], path, line) if labelled else None
            if task.index_column in where:
                try:
                    idx = int(row[where[task.index_column]])
                except ValueError:
                    raise ValueError(f"{path}:{line}: {task.index_column} column is not an "
                                     f"integer: {row[where[task.index_column]]!r}") from None
            else:
                idx = len(examples)
            text_b = row[where[task.text_b]].strip() if task.text_b else None
            examples.append(Example(idx, row[where[task.text_a]].strip(), text_b, label))
    return examples


def _parse_label(task: Task, value: str, path, line: int) -> int | float:
    value = value.strip()
    if task.is_regression:
        try:
            score = float(value)
        except ValueError:
            raise ValueError(f"{path}:{line}: {task.name} score {value!r} is not a number") from None
        _check_score(task, score, f"{path}:{line}")
        return score
    try:
        return task.labels.index(value)
    except ValueError:
        raise ValueError(f"{path}:{line}: unknown {task.name} label {value!r}; "
                         f"expected one of {list(task.labels)}") from None


def _check_score(task: Task, score: float, where: str) -> None:
    """A regression label must be finite and on the task's scale: a stray `nan` or `7.5` would
    otherwise only show up as a diverging loss many steps later."""
    lo, hi = task.score_range or (-np.inf, np.inf)
    if not (np.isfinite(score) and lo <= score <= hi):
        raise ValueError(f"{where}: {task.name} score {score!r} is not a finite number in "
                         f"[{lo:g}, {hi:g}]")


def read_tfds(task: str | Task, split: str, data_dir: str | None = None) -> list[Example]:
    """Examples of TFDS `glue/<config>` (already prepared: this never downloads), in the order
    of the TSV files (TFDS stores them shuffled; `idx` is the row).

    Test splits carry label -1 in TFDS; they come back with label None.
    """
    task = get_task(task)
    name = f"glue/{task.tfds_config}"
    source = tfds_source.open_source(name, split, data_dir)
    field_a, field_b = task.tfds_text
    examples = []
    for i, record in enumerate(tfds_source.records(source)):
        raw = record["label"]
        label = None
        if task.is_regression:
            if not split.startswith("test"):  # TFDS test splits carry -1: unlabelled
                label = float(raw)
                _check_score(task, label, f"{name} {split} record {i}")
        elif int(raw) >= 0:
            if int(raw) >= len(task.tfds_labels):
                raise ValueError(f"{name} {split} record {i}: label {int(raw)} out of range")
            label = task.labels.index(task.tfds_labels[int(raw)])
        text_b = tfds_source.text(record[field_b]).strip() if field_b else None
        examples.append(Example(int(record["idx"]), tfds_source.text(record[field_a]).strip(),
                                text_b, label))
    return sorted(examples, key=lambda ex: ex.idx)


# ----------------------------------------------------------------------- featurization


def encode_pair(tokenizer, ids_a: Sequence[int], ids_b: Sequence[int] | None,
                max_length: int) -> list[int]:
    """`<s> A </s>` or `<s> A </s></s> B </s>`, truncating the longer text first to fit."""
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    if ids_b is None:
        if max_length < 3:
            raise ValueError(f"max_length {max_length} leaves no room for text")
        return [bos, *ids_a[: max_length - 2], eos]
    budget = max_length - 4
    if budget < 2:
        raise ValueError(f"max_length {max_length} leaves no room for a text pair")
    la, lb = len(ids_a), len(ids_b)
    # BERT's _truncate_seq_pair: drop one token from the end of the longer text until it
    # fits (ties shorten B), so a short text survives whole next to a long one.
    while la + lb > budget:
        if la > lb:
            la -= 1
        else:
            lb -= 1
    return [bos, *ids_a[:la], eos, eos, *ids_b[:lb], eos]


def pad(rows: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad id lists to `length`: (input_ids [N, length] int32, attention_mask int32)."""
    ids = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


def featurize(examples: Iterable[Example], tokenizer, max_length: int = 512,
              pad_to_longest: bool = False) -> dict[str, np.ndarray]:
    """Token ids for a list of examples.

    Returns `input_ids` [N, L] int32 (padded with the tokenizer's pad id, 1 for RoBERTa),
    `attention_mask` [N, L] int32 and `labels` [N]: int32 class ids (-1 when unlabelled)
    or float32 scores for STS-B (nan when unlabelled). L is `max_length`, or the longest
    row with `pad_to_longest=True`.
    """
    examples = list(examples)
    rows = []
    for ex in examples:
        ids_b = tokenizer.encode_plain(ex.text_b) if ex.text_b is not None else None
        rows.append(encode_pair(tokenizer, tokenizer.encode_plain(ex.text_a), ids_b, max_length))
    length = max((len(r) for r in rows), default=0) if pad_to_longest else max_length
    input_ids, attention_mask = pad(rows, length, tokenizer.pad_id)
    if any(isinstance(ex.label, (float, np.floating)) for ex in examples):
        labels = np.array([np.nan if ex.label is None else ex.label for ex in examples], np.float32)
    else:
        labels = np.array([-1 if ex.label is None else ex.label for ex in examples], np.int32)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


# ----------------------------------------------------------------------------- metrics


def _as_predictions(task: Task, predictions) -> np.ndarray:
    """Class ids from ids or logits [N, C]; scores from [N] or [N, 1] for regression."""
    p = np.asarray(predictions)
    if task.is_regression:
        return p.reshape(len(p), -1)[:, 0] if p.ndim == 2 else p
    return p.argmax(axis=-1) if p.ndim == 2 else p


def compute_metrics(task: str | Task, predictions, labels) -> dict[str, float]:
    """The task's GLUE metrics for one split, by DESIGN.md's names.

    `predictions` are class ids [N] or logits [N, C] (scores [N] or [N, 1] for STS-B);
    `labels` are class ids (scores). CoLA → mcc; SST-2, MNLI (per split), QNLI, RTE,
    WNLI → accuracy; MRPC, QQP → f1 (of class "1") and accuracy; STS-B → pearson, spearman.
    """
    task = get_task(task)
    if not task.metrics:
        raise ValueError(f"{task.name} has no labelled splits to score")
    p, y = _as_predictions(task, predictions), np.asarray(labels)
    fns = {"accuracy": _metrics.accuracy, "f1": _metrics.f1, "mcc": _metrics.matthews_corrcoef,
           "pearson": _metrics.pearson, "spearman": _metrics.spearman}
    return {name: fns[name](p, y) for name in task.metrics}


# -------------------------------------------------------------------------- submission


def write_submission(task: str | Task, split: str, predictions, output_dir: str | os.PathLike,
                     indices: Sequence[int] | None = None) -> Path:
    """Write a GLUE leaderboard file (`CoLA.tsv`, `MNLI-m.tsv`, `AX.tsv`, ...).

    Rows are `index<TAB>prediction` under that header, with the label strings GLUE
    expects ("entailment", "not_entailment", "0", ...); STS-B scores are clipped to the
    0-5 range of the task and written with three decimals. `indices` default to 0..N-1
    (the test files' own index column, as `Example.idx` holds it).
    """
    task = get_task(task)
    if split not in task.submission:
        raise ValueError(f"{task.name} has no test split {split!r}; it has "
                         f"{', '.join(task.submission)}")
    return write_predictions(task, predictions, Path(output_dir) / task.submission[split],
                             indices)


# The leaderboard's files: name -> (task, test split); GLUE wants all eleven in one zip.
SUBMISSION_FILES: dict[str, tuple[str, str]] = {
    name: (t.name, split) for t in TASKS.values() for split, name in t.submission.items()}


def read_submission(path: str | os.PathLike) -> tuple[Task, str, list[int]]:
    """(task, test split, indices) of a leaderboard file, the task told by its name
    (`RTE.tsv`, `MNLI-m.tsv`, ...), checked row by row as `format_predictions` writes them:
    the `index<TAB>prediction` header, integer indices without repeats, and predictions that
    are the task's label strings (STS-B: numbers on its 0-5 scale). Errors name FILE:LINE."""
    path = Path(path)
    if path.name not in SUBMISSION_FILES:
        raise ValueError(f"{path}: not a GLUE leaderboard file name; expected one of "
                         f"{', '.join(SUBMISSION_FILES)}")
    name, split = SUBMISSION_FILES[path.name]
    task = TASKS[name]
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().splitlines()
    if not lines or lines[0] != "index\tprediction":
        raise ValueError(f"{path}:1: expected the header 'index<TAB>prediction', found "
                         f"{lines[0] if lines else 'an empty file'!r}")
    indices, seen = [], {}
    for n, line in enumerate(lines[1:], 2):
        cells = line.split("\t")
        if len(cells) != 2:
            raise ValueError(f"{path}:{n}: expected 2 tab-separated columns, found "
                             f"{len(cells)}")
        try:
            idx = int(cells[0])
        except ValueError:
            raise ValueError(f"{path}:{n}: index {cells[0]!r} is not an integer") from None
        if idx in seen:
            raise ValueError(f"{path}:{n}: index {idx} repeats line {seen[idx]}")
        seen[idx] = n
        _parse_label(task, cells[1], path, n)
        indices.append(idx)
    return task, split, indices


def write_predictions(task: str | Task, predictions, path: str | os.PathLike,
                      indices: Sequence[int] | None = None, labels=None) -> Path:
    """`format_predictions` written to `path` (its folder made when missing)."""
    path = Path(path)
    text = format_predictions(task, predictions, indices, labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return path


def format_predictions(task: str | Task, predictions, indices: Sequence[int] | None = None,
                       labels=None) -> str:
    """`index<TAB>prediction` rows under that header (GLUE's submission layout); with `labels`
    (class ids or scores, e.g. of a dev set) a third column `label` holds the gold answer the
    same way. Predictions are ids or logits [N, C] (scores [N] or [N, 1]); STS-B scores are
    clipped to the task's 0-5 scale and written with three decimals."""
    task = get_task(task)
    values = _label_strings(task, _as_predictions(task, predictions), clip=True)
    indices = range(len(values)) if indices is None else list(indices)
    if len(indices) != len(values):
        raise ValueError(f"{len(values)} predictions for {len(indices)} indices")
    gold = None
    if labels is not None:
        gold = _label_strings(task, np.asarray(labels), clip=False)
        if len(gold) != len(values):
            raise ValueError(f"{len(values)} predictions for {len(gold)} labels")
    lines = ["index\tprediction" + ("\tlabel" if gold is not None else "")]
    for row, (i, v) in enumerate(zip(indices, values)):
        lines.append(f"{int(i)}\t{v}" + (f"\t{gold[row]}" if gold is not None else ""))
    return "\n".join(lines) + "\n"


def _label_strings(task: Task, p: np.ndarray, clip: bool) -> list[str]:
    """Class ids -> the label strings GLUE expects ("entailment", "0", ...); scores -> "%.3f"."""
    if task.is_regression:
        p = p.astype(np.float64)
        return [f"{v:.3f}" for v in (np.clip(p, *task.score_range) if clip else p)]
    p = p.astype(np.int64)
    if p.size and (p.min() < 0 or p.max() >= len(task.labels)):
        raise ValueError(f"{task.name} class ids must lie in [0, {len(task.labels)}); "
                         f"got {p.min()}..{p.max()}")
    return [task.labels[c] for c in p]
