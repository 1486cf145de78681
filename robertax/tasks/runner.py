"""What the fine-tuning loop (`robertax.finetune`) needs from each task: data, head, loss, score.

One class per task family. Each turns the run config into:
  * `module(model_config)`         the Linen model (encoder + the task's head)
  * `head_names`                   top-level parameter keys of the head(s), the rest is "encoder"
  * `train_arrays(tokenizer)`      model inputs and targets, numpy arrays with N first
  * `eval_sets(tokenizer)`         dev sets to score: `EvalSet(arrays, score)`, where
                                   `score(outputs)` maps the model's outputs on `arrays` to
                                   metrics by DESIGN.md's names (prefixed/suffixed per set)
                                   and `files(outputs)` to prediction files {name: text}
  * `metric_names`                 what `score` may return that can select the best model
                                   (checked against config.select_metric before training)
  * `loss_sums(outputs, batch)`    {term: summed loss}; `loss_counts(batch)` {term: count}.
                                   The training loss is the sum over terms of sum / count, the
                                   counts taken over the whole batch, so microbatches add up.
  * `test_sets(tokenizer)`         the test sets config.predict_test scores: GLUE (task, split,
                                   examples, arrays) for leaderboard files, whose class ids
                                   `submission_predictions` decides (WSC: WNLI.tsv the same
                                   way); RACE EvalSets; SQuAD none
  * `train_order(arrays, epoch)`   optional: an epoch's row order (None: a plain shuffle), e.g.
                                   QNLI's with config.ranking_loss

Every array dict carries `weight` [N] float32 (1 for real examples); the loop pads the last
batch with weight-0 rows so one compiled shape serves every step.

Metric names in results.json: GLUE as `glue.compute_metrics` (accuracy, f1, mcc, pearson,
spearman; fractions 0-1), MNLI's mismatched dev set with the suffix `_mismatched`
(`accuracy_mismatched`), QNLI's accuracy ranked by question (config.ranking) as
`accuracy_ranking`; SQuAD as `squad.evaluate` (exact_match, f1 in percent, v2.0 also
HasAns_*/NoAns_* and the question counts *total, ints); RACE `accuracy` plus
`accuracy_middle` / `accuracy_high`, the test split's as `test_accuracy*` with `test_examples`
(the number of test questions scored: config.max_eval_examples applies to it too); WSC
`accuracy` over every dev row (WNLI's rows that cannot be aligned count as predicted 0).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
import optax

from robertax import model as model_lib
from robertax.data import tfds_source
from robertax.tasks import glue, race, ranking, squad, wsc

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EvalSet:
    name: str                                  # "" for the main dev set, e.g. "_mismatched"
    arrays: dict[str, np.ndarray]              # model inputs with `weight`
    score: Callable[[Any], dict[str, float]]   # outputs (numpy pytree, N first) -> metrics
    examples: int = -1                         # questions scored (SQuAD: fewer than rows)
    files: Callable[[Any], dict[str, str]] | None = None  # outputs -> {file name: contents}

    def __post_init__(self):
        if self.examples < 0:
            self.examples = len(self.arrays["input_ids"])


def subset(items: list, limit: int, seed: int | None) -> list:
    """The first `limit` items (seed None) or a seeded random `limit` of them in file order;
    limit <= 0 keeps all. Random for training so a small subset covers the whole file."""
    if limit <= 0 or limit >= len(items):
        return list(items)
    if seed is None:
        return list(items[:limit])
    keep = np.sort(np.random.default_rng(seed).choice(len(items), limit, replace=False))
    return [items[i] for i in keep]


def trim(arrays: dict[str, np.ndarray], multiple: int = 8) -> dict[str, np.ndarray]:
    """Cuts `input_ids`/`attention_mask` to the longest real row (rounded up to `multiple`;
    0: left as they are): short-text tasks (SST-2 averages ~25 tokens) then run at a fraction
    of max_length."""
    if multiple <= 0:
        return arrays
    mask = arrays["attention_mask"]
    longest = int(mask.reshape(-1, mask.shape[-1]).sum(-1).max(initial=1))
    length = min(mask.shape[-1], -(-longest // multiple) * multiple)
    return {k: (v[..., :length] if k in ("input_ids", "attention_mask") else v)
            for k, v in arrays.items()}


def _with_weight(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    n = len(arrays["input_ids"])
    return {**arrays, "weight": np.ones(n, np.float32)}


def _tfds_dir(config) -> str | None:
    """config.tfds_data_dir: where prepared TFDS datasets are ("": TFDS_DATA_DIR or
    ~/tensorflow_datasets)."""
    return config.get("tfds_data_dir") or None


def _ce(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


# ------------------------------------------------------------------------------ GLUE


class GlueTask:
    """The nine GLUE tasks: sentence(-pair) classification, STS-B regression."""

    # Outputs and losses read the real tokens only, so each batch may be cut to its own longest
    # row (config.pad_to_multiple_of); SQuAD's span logits cover every position, so not there.
    per_batch_length = True

    def __init__(self, config):
        self.config = config
        self.task = glue.get_task(config.task)
        if self.task.name not in glue.GLUE_TASKS:
            raise ValueError(f"config.task={config.task!r}: {self.task.name} is not one of the "
                             f"nine GLUE tasks {glue.GLUE_TASKS}")
        self.name = self.task.name
        self.num_labels = 1 if self.task.is_regression else len(self.task.labels)
        self.metric = self.task.metrics[0]  # MRPC: f1, QQP: accuracy, STS-B: pearson, ...
        self.head_names = ("classifier",)
        self.labels = self.task.labels  # class order of the head's outputs (None: regression)
        self.extra = {"labels": list(self.task.labels or []), "num_labels": self.num_labels}
        self.ranking = bool(config.get("ranking", False))  # QNLI only: see make_task
        self.ranking_loss = float(config.get("ranking_loss", 0.0))

    @property
    def metric_names(self) -> list[str]:
        splits = self.task.dev_splits  # MNLI: matched, then mismatched
        suffixes = ["_mismatched" if s.endswith("_mismatched") else "" for s in splits]
        return [m + x for x in suffixes for m in self.task.metrics] + (
            ["accuracy_ranking"] if self.ranking else [])

    def module(self, mc):
        return model_lib.RobertaForSequenceClassification(mc, num_labels=self.num_labels)

    def _read(self, split: str) -> list[glue.Example]:
        c = self.config
        if c.data_dir == "tfds":
            return glue.read_tfds(self.task, split, _tfds_dir(c))
        path = os.path.join(c.data_dir, self.task.folder or self.task.name, self.task.files[split])
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no {self.task.name} {split} file (config.data_dir="
                                    f"{c.data_dir!r} should hold the GLUE folders, e.g. "
                                    f"{self.task.name}/{self.task.files[split]})")
        return glue.read_tsv(self.task, c.data_dir, split)

    def _featurize(self, examples, tokenizer):
        f = glue.featurize(examples, tokenizer, max_length=self.config.max_length)
        return trim(_with_weight(f))

    def train_arrays(self, tokenizer):
        examples = subset(self._read("train"), self.config.max_train_examples,
                          self.config.data_seed)
        arrays = self._featurize(examples, tokenizer)
        if self.ranking_loss > 0:  # QNLI: each question's rows, and the answers to rank
            arrays["group"], arrays["rankable"] = ranking.question_groups(
                [ex.text_a for ex in examples],
                [self.task.labels[ex.label] == ranking.YES for ex in examples])
            rows = np.bincount(arrays["group"])
            several, ranked = int((rows > 1).sum()), int(arrays["rankable"].sum())
            log.info("%s ranking loss: %d of %d questions have several candidate sentences; "
                     "%d of those have exactly one answer and are ranked", self.name,
                     several, len(rows), ranked)
            if several > ranked:
                log.warning("%s: %d questions of several candidates have no answer or more "
                            "than one: the ranking loss skips them (their rows are still "
                            "classified)", self.name, several - ranked)
        return arrays, len(examples)

    def train_order(self, arrays, epoch: int) -> np.ndarray | None:
        """With config.ranking_loss, one epoch's row order that keeps each question's rows in
        one microbatch (see ranking.train_order); else None (a plain shuffle)."""
        if self.ranking_loss <= 0:
            return None
        c = self.config
        order, split = ranking.train_order(arrays["group"], c.batch_size // c.microbatches,
                                           c.seed, epoch)
        if split:
            log.warning("epoch %d: %d questions split across microbatches; each part is ranked "
                        "on its own", epoch, split)
        return order

    def eval_sets(self, tokenizer) -> list[EvalSet]:
        sets = []
        for split in self.task.dev_splits:  # MNLI: matched, then mismatched
            examples = subset(self._read(split), self.config.max_eval_examples, None)
            arrays = self._featurize(examples, tokenizer)
            suffix = "_mismatched" if split.endswith("_mismatched") else ""
            sets.append(EvalSet(suffix, arrays, self._scorer(examples, arrays["labels"], suffix),
                                files=self._writer(examples, arrays["labels"], suffix)))
        return sets

    def _ranked(self, examples, outputs) -> np.ndarray:
        return ranking.rank_by_question(self.labels, outputs, [ex.text_a for ex in examples])

    def _writer(self, examples, labels, suffix):
        def files(outputs):  # index, predicted label, gold label: for error analysis
            idx = [ex.idx for ex in examples]
            out = {f"dev_predictions{suffix}.tsv": glue.format_predictions(
                self.task, np.asarray(outputs), idx, labels)}
            if self.ranking:
                out[f"dev_predictions_ranking{suffix}.tsv"] = glue.format_predictions(
                    self.task, self._ranked(examples, outputs), idx, labels)
            return out
        return files

    def _scorer(self, examples, labels, suffix):
        def score(outputs):
            m = glue.compute_metrics(self.task, np.asarray(outputs), labels)
            if self.ranking:  # the pure classification accuracy stays `accuracy` (the paper's)
                m["accuracy_ranking"] = glue.compute_metrics(
                    self.task, self._ranked(examples, outputs), labels)["accuracy"]
            return {k + suffix: v for k, v in m.items()}
        return score

    def submission_predictions(self, task: glue.Task, examples, outputs) -> np.ndarray:
        """Class ids (scores) for one test set's leaderboard file from the model's outputs on
        it: the argmax, QNLI's ranking by question with config.ranking, and for AX (the MNLI
        head on the diagnostic set) the MNLI ids mapped through their label strings."""
        outputs = np.asarray(outputs)
        if task is not self.task:
            ids = outputs.argmax(-1)
            return np.array([task.labels.index(self.task.labels[i]) for i in ids])
        if self.ranking:
            return self._ranked(examples, outputs)
        return outputs

    def loss_sums(self, logits, batch):
        w = batch["weight"]
        if self.task.is_regression:  # STS-B: mean squared error (fairseq's sentence_prediction)
            err = logits[:, 0].astype(jnp.float32) - batch["labels"].astype(jnp.float32)
            return {"loss": (err * err * w).sum()}
        labels = jnp.maximum(batch["labels"], 0)  # unlabelled padding rows carry -1, weight 0
        sums = {"loss": (_ce(logits, labels) * w).sum()}
        if self.ranking_loss > 0:  # QNLI: classification plus the weighted ranking term
            sums["ranking"] = self.ranking_loss * ranking.loss_sums(logits, self.labels, batch)
        return sums

    def loss_counts(self, batch):
        counts = {"loss": batch["weight"].sum()}
        if self.ranking_loss > 0:
            counts["ranking"] = (batch["rankable"] * batch["weight"]).sum()
        return counts

    def test_sets(self, tokenizer) -> list[tuple[glue.Task, str, list, dict]]:
        """(task, split, examples, arrays) of each test set there is (a missing one is skipped
        with a warning); MNLI adds the diagnostic set (AX), which GLUE scores with the MNLI
        model."""
        c, out = self.config, []
        wanted = [(self.task, s) for s in self.task.test_splits]
        if self.task.name == "MNLI":
            wanted.append((glue.TASKS["AX"], "test"))
        for task, split in wanted:
            if c.data_dir == "tfds":
                try:
                    examples = glue.read_tfds(task, split, _tfds_dir(c))
                except tfds_source.NotPrepared as e:
                    log.warning("no %s %s set: no submission for it (%s)", task.name, split, e)
                    continue
            else:
                path = os.path.join(c.data_dir, task.folder or task.name, task.files[split])
                if not os.path.isfile(path):
                    log.warning("no %s test file %s: no submission for it", task.name, path)
                    continue
                examples = glue.read_tsv(task, c.data_dir, split)
            arrays = self._featurize(examples, tokenizer)
            out.append((task, split, examples, arrays))
        return out


# ----------------------------------------------------------------------------- SQuAD


class SquadTask:
    """SQuAD v1.1 / v2.0 span extraction; v2.0 trains an answerable classifier jointly."""

    # Span logits [N, L] over every position (the loss's softmax includes the padding, as
    # BERT's): every batch keeps the data's length (windows are mostly full anyway).
    per_batch_length = False

    def __init__(self, config):
        self.config = config
        self.version = squad._version(config.squad_version)  # pylint: disable=protected-access
        self.name = f"SQuAD-v{self.version}"
        self.v2 = self.version == "2.0"
        self.metric = "f1"
        self.head_names = ("span", "answerable") if self.v2 else ("span",)
        self.labels = None
        self.extra = {"squad_version": self.version}

    @property
    def metric_names(self) -> list[str]:
        names = ["exact_match", "f1"]
        if self.v2:
            names += [f"{p}_{m}" for p in ("HasAns", "NoAns") for m in ("exact", "f1")]
        return names

    def module(self, mc):
        return model_lib.RobertaForQuestionAnswering(mc, answerable_head=self.v2)

    def _read(self, split: str) -> list[squad.Example]:
        c = self.config
        if c.data_dir == "tfds" and not (c.train_file if split == "train" else c.eval_file):
            return squad.read_tfds(self.version, "train" if split == "train" else "validation",
                                   _tfds_dir(c))
        name = "train" if split == "train" else "dev"
        path = (c.train_file if split == "train" else c.eval_file) or os.path.join(
            c.data_dir, f"{name}-v{self.version}.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no SQuAD v{self.version} {name} file (set "
                                    f"config.{'train' if split == 'train' else 'eval'}_file or "
                                    "config.data_dir)")
        return squad.read_json(path)

    def _featurize(self, examples, tokenizer):
        c = self.config
        return squad.featurize(examples, tokenizer, max_length=c.max_length,
                               doc_stride=c.doc_stride, max_query_length=c.max_query_length)

    def train_arrays(self, tokenizer):
        examples = subset(self._read("train"), self.config.max_train_examples,
                          self.config.data_seed)
        if not self.v2 and any(ex.is_impossible or not ex.answers for ex in examples):
            raise ValueError("SQuAD v1.1 training data holds unanswerable questions: set "
                             "config.squad_version='2.0' for SQuAD v2.0 files")
        return _with_weight(self._featurize(examples, tokenizer).arrays()), len(examples)

    def eval_sets(self, tokenizer) -> list[EvalSet]:
        examples = subset(self._read("dev"), self.config.max_eval_examples, None)
        features = self._featurize(examples, tokenizer)
        gold = squad.as_official(examples, self.version)
        arrays = _with_weight({"input_ids": features.input_ids,
                               "attention_mask": features.attention_mask})
        return [EvalSet("", arrays, lambda out: self.score(out, features, gold), len(examples),
                        files=lambda out: self.files(out, features))]

    def answers(self, outputs, features) -> tuple[dict[str, str], dict[str, float] | None]:
        """(question id -> answer text, "" for no answer; v2.0 question id -> no-answer score,
        else None). The score is min over windows of logit(no) - logit(yes) of the answerable
        classifier; the answer is "" where it exceeds config.null_threshold."""
        c = self.config
        # Best spans by BERT's n-best search; v2.0's no-answer decision comes from the
        # answerable classifier below, so spans are decoded with v1.1's rules.
        texts = squad.decode(outputs.start_logits, outputs.end_logits, features,
                             n_best=c.n_best, max_answer_length=c.max_answer_length,
                             version="1.1")
        if not self.v2:
            return texts, None
        null = squad.no_answer_margins(outputs.answerable_logits, features)
        for e, qid in enumerate(features.example_ids):
            if null[e] > c.null_threshold:
                texts[qid] = ""
        return texts, {qid: float(null[e]) for e, qid in enumerate(features.example_ids)}

    def score(self, outputs, features, gold) -> dict[str, float | int]:
        texts, _ = self.answers(outputs, features)
        # Scores as floats, question counts (v2.0's *total) as ints, as the official script.
        return {k: v if isinstance(v, int) else float(v)
                for k, v in squad.evaluate(gold, texts, self.version).items()}

    def files(self, outputs, features) -> dict[str, str]:
        """predictions.json (the official scripts' input); v2.0 also null_odds.json, the
        official v2.0 script's --na-prob-file (its --na-prob-thresh=config.null_threshold
        reproduces these answers; it also reports the best threshold)."""
        texts, null = self.answers(outputs, features)
        out = {"predictions.json": json.dumps(texts, indent=2, ensure_ascii=False)}
        if null is not None:
            out["null_odds.json"] = json.dumps(null, indent=2)
        return out

    def loss_sums(self, out: model_lib.SpanOutput, batch):
        w = batch["weight"]
        span = 0.5 * (_ce(out.start_logits, batch["start_positions"])
                      + _ce(out.end_logits, batch["end_positions"]))  # BERT's (start + end) / 2
        if not self.v2:
            # v1.1 windows that miss the answer point at <s> (position 0), as in BERT.
            return {"span": (span * w).sum()}
        answerable = 1 - batch["is_impossible"]  # class 1 = the window holds the answer
        # The paper's v2.0 recipe: span loss (on windows with an answer) + classifier loss.
        return {"span": (span * w * answerable).sum(),
                "answerable": (_ce(out.answerable_logits, answerable) * w).sum()}

    def loss_counts(self, batch):
        w = batch["weight"]
        if not self.v2:
            return {"span": w.sum()}
        return {"span": (w * (1 - batch["is_impossible"])).sum(), "answerable": w.sum()}

    def test_sets(self, tokenizer):
        return []  # SQuAD's test sets are hidden (scored by submission to CodaLab)


# ------------------------------------------------------------------------------ RACE


class RaceTask:
    """RACE: four (passage, question + option) encodings per question, softmax over them."""

    per_batch_length = True  # see GlueTask

    def __init__(self, config):
        self.config = config
        self.name = "RACE"
        self.metric = "accuracy"
        self.head_names = ("classifier",)
        self.labels = None
        self.extra = {"num_choices": race.NUM_CHOICES}
        self.metric_names = ["accuracy"] + [f"accuracy_{level}" for level in race.LEVELS]

    def module(self, mc):
        return model_lib.RobertaForMultipleChoice(mc)

    def _read(self, split: str) -> list[race.Example]:
        c = self.config
        if c.data_dir == "tfds":  # TFDS race's splits are named as the release's folders
            return [ex for level in race.LEVELS
                    for ex in race.read_tfds(level, split, _tfds_dir(c))]
        return race.read_dir(c.data_dir, split)

    def _featurize(self, examples, tokenizer):
        c = self.config
        f = race.featurize(examples, tokenizer, max_length=c.max_length,
                           max_option_length=c.max_option_length)
        return trim(_with_weight(f))

    def train_arrays(self, tokenizer):
        examples = subset(self._read("train"), self.config.max_train_examples,
                          self.config.data_seed)
        return self._featurize(examples, tokenizer), len(examples)

    def _set(self, split, tokenizer, prefix=""):
        examples = subset(self._read(split), self.config.max_eval_examples, None)
        arrays = self._featurize(examples, tokenizer)
        level = np.array([ex.id.split(".")[0].rstrip("0123456789") for ex in examples])

        def score(outputs):
            pred = np.asarray(outputs).argmax(-1)
            right = pred == arrays["labels"]
            m = {f"{prefix}accuracy": float(right.mean())}
            for name in race.LEVELS:  # the paper reports Middle and High apart (Table 7)
                if (level == name).any():
                    m[f"{prefix}accuracy_{name}"] = float(right[level == name].mean())
            return m

        def files(outputs):  # question id -> predicted option letter
            pred = np.asarray(outputs).argmax(-1)
            name = f"{prefix or 'dev_'}predictions.json"
            return {name: json.dumps({ex.id: "ABCD"[int(p)] for ex, p in zip(examples, pred)},
                                     indent=2)}
        return EvalSet("", arrays, score, files=files)

    def eval_sets(self, tokenizer):
        return [self._set("dev", tokenizer)]

    def loss_sums(self, scores, batch):
        return {"loss": (_ce(scores, batch["labels"]) * batch["weight"]).sum()}

    def loss_counts(self, batch):
        return {"loss": batch["weight"].sum()}

    def test_sets(self, tokenizer) -> list[EvalSet]:
        """The test split, scored like dev (`test_accuracy`, ...): RACE's test answers are
        public. None there: [] with a warning."""
        try:
            return [self._set("test", tokenizer, prefix="test_")]
        except (FileNotFoundError, tfds_source.NotPrepared) as e:
            log.warning("no RACE test split: %s", e)
            return []


# ------------------------------------------------------------------------------- WSC


class WscTask:
    """WNLI the paper's way, or SuperGLUE's WSC: candidates scored by the masked LM (wsc.py)."""

    per_batch_length = True  # see GlueTask

    FILES = {"wnli": {"train": "WNLI/train.tsv", "dev": "WNLI/dev.tsv", "test": "WNLI/test.tsv"},
             "superglue": {"train": "train.jsonl", "dev": "val.jsonl", "test": "test.jsonl"}}

    def __init__(self, config):
        self.config = config
        self.data = str(config.get("wsc_data", "wnli"))
        if self.data not in self.FILES:
            raise ValueError(f"config.wsc_data={self.data!r}: 'wnli' (GLUE's WNLI folder in "
                             "config.data_dir) or 'superglue' (SuperGLUE's WSC jsonl files)")
        self.loss = str(config.get("wsc_loss", "cross_entropy"))
        if self.loss not in ("cross_entropy", "margin"):
            raise ValueError(f"config.wsc_loss={self.loss!r}: 'cross_entropy' or 'margin'")
        self.alpha = float(config.get("wsc_alpha", 5.0))  # the margin loss's (base.py)
        self.beta = float(config.get("wsc_beta", 0.4))
        self.name = "WSC"
        self.metric = "accuracy"
        self.metric_names = ["accuracy"]
        self.head_names = ("mlm_head",)  # the pretrained head scores the candidates
        self.labels = None
        self.extra = {"wsc_data": self.data, "wsc_loss": self.loss}
        self._read_cache: dict[str, list[wsc.Schema]] = {}
        self._span = 0  # the most candidate tokens of any row featurized

    def module(self, mc):
        # The head runs on the candidates' positions only: the most any row read so far has
        # (prepare reads every set first), rounded up to a multiple of 8; 0 = every position.
        return model_lib.RobertaForCandidateScoring(mc, span=-(-self._span // 8) * 8)

    def _path(self, split: str) -> str:
        return os.path.join(self.config.data_dir, self.FILES[self.data][split])

    def _read(self, split: str) -> list[wsc.Schema]:
        if split not in self._read_cache:
            path = self._path(split)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: no {self.data} {split} file (config.data_dir="
                                        f"{self.config.data_dir!r}, config.wsc_data={self.data!r})")
            read = wsc.read_wnli if self.data == "wnli" else wsc.read_superglue
            schemas = read(path, labelled=split != "test")
            problems = [s for s in schemas if s.problem]
            log.info("%s: %d schemas, %d cannot be scored (predicted 0, not trained on)", path,
                     len(schemas), len(problems))
            for s in problems:
                log.warning("%s: row %s cannot be scored: %s", path, s.idx, s.problem)
            self._read_cache[split] = schemas
        return self._read_cache[split]

    def _pool(self) -> list[wsc.Schema]:
        """Every split's schemas there are: where the other candidates for a pronoun come from
        (WNLI's dev sentences name their other referent in train)."""
        return [s for split in ("train", "dev", "test") if os.path.isfile(self._path(split))
                for s in self._read(split)]

    def _featurize(self, schemas, tokenizer, what: str):
        others = wsc.candidates(schemas, self._pool())
        alone = sum(1 for s, o in zip(schemas, others) if not s.problem and not o)
        if alone:
            log.warning("%s: %d of %d schemas have no other candidate for their pronoun "
                        "(predicted 1, as fairseq does; the cross-entropy over one candidate "
                        "is 0)", what, alone, len(schemas))
        arrays = wsc.featurize(schemas, others, tokenizer, self.config.max_length)
        tokens = (arrays["input_ids"][..., 1, :] != tokenizer.pad_id).sum(-1)
        self._span = max(self._span, int(tokens.max(initial=0)))
        return trim(_with_weight(arrays))

    def train_arrays(self, tokenizer):
        schemas = subset(self._read("train"), self.config.max_train_examples,
                         self.config.data_seed)
        return self._featurize(schemas, tokenizer, "train"), len(schemas)

    def eval_sets(self, tokenizer) -> list[EvalSet]:
        schemas = subset(self._read("dev"), self.config.max_eval_examples, None)
        arrays = self._featurize(schemas, tokenizer, "dev")

        def score(outputs):
            pred = wsc.predict(outputs, arrays["scorable"])
            return {"accuracy": float((pred == arrays["labels"]).mean())}

        def files(outputs):  # index, predicted label, gold label (WNLI's 0/1)
            pred = wsc.predict(outputs, arrays["scorable"])
            return {"dev_predictions.tsv": glue.format_predictions(
                "WNLI", pred, [s.idx for s in schemas], arrays["labels"])}
        return [EvalSet("", arrays, score, files=files)]

    def submission_predictions(self, task, schemas, outputs) -> np.ndarray:
        return wsc.predict(outputs, np.array([0.0 if s.problem else 1.0 for s in schemas]))

    def test_sets(self, tokenizer):
        """WNLI's test file as GLUE's WNLI.tsv; SuperGLUE's format has no leaderboard file here."""
        if self.data != "wnli":
            log.warning("config.wsc_data='superglue': no leaderboard file is written")
            return []
        if not os.path.isfile(self._path("test")):
            log.warning("no WNLI test file %s: no submission for it", self._path("test"))
            return []
        schemas = self._read("test")
        return [(glue.TASKS["WNLI"], "test", schemas, self._featurize(schemas, tokenizer, "test"))]

    def loss_sums(self, scores, batch):
        return {"loss": wsc.loss_sums(scores, batch, self.loss, self.alpha, self.beta)}

    def loss_counts(self, batch):
        return {"loss": (batch["scorable"] * batch["weight"]).sum()}


def make_task(config):
    """The task object for `config.task`: a GLUE name, "squad", "race" or "wsc"."""
    name = str(config.task).strip().lower()
    if name not in ("squad", "race", "wsc"):
        try:
            name = glue.get_task(config.task).name
        except ValueError:
            name = None
        if name not in glue.GLUE_TASKS:
            raise ValueError(f"config.task={config.task!r}: expected a GLUE task "
                             f"({', '.join(glue.GLUE_TASKS)}), 'squad', 'race' or 'wsc'")
    for key, value in (("ranking", config.get("ranking", False)),
                       ("ranking_loss", config.get("ranking_loss", 0.0))):
        if value and name != "QNLI":
            raise ValueError(f"config.{key}={value}: ranking candidate sentences by question "
                             f"is QNLI's formulation (Section 5.1), not {config.task}'s")
    if config.get("ranking_loss", 0.0) < 0:
        raise ValueError(f"config.ranking_loss={config.ranking_loss}: a weight, 0 (off) or more")
    if config.get("ranking_loss", 0.0) > 0 and config.batch_size // config.microbatches < 2:
        raise ValueError(f"config.ranking_loss={config.ranking_loss} ranks the candidates "
                         f"within a microbatch: config.batch_size={config.batch_size} over "
                         f"config.microbatches={config.microbatches} leaves one row in each")
    if name == "wsc":
        for key, on in (("from_mnli", config.from_mnli), ("head", config.head == "fresh")):
            if on:
                raise ValueError(f"config.{key}={config.get(key)!r}: WSC scores candidates with "
                                 "the pretrained masked-LM head, which a new head would replace")
        return WscTask(config)
    if name == "squad":  # the version is config.squad_version
        return SquadTask(config)
    if name == "race":
        return RaceTask(config)
    return GlueTask(config)
