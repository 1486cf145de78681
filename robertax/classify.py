"""Classify texts or text pairs with a fine-tuned sentence classifier, as fairseq's
`roberta.predict(head, tokens)` and transformers' "text-classification" pipeline do.

    python -m robertax.classify --model=PATH [--tokenizer=DIR] [--output=PREDICTIONS.jsonl]
        (--input=FILE | TEXT ...)

PATH is a checkpoint with a sentence classifier: a fine-tuning run's best/ directory (GLUE),
a Hugging Face `RobertaForSequenceClassification` directory, or a fairseq checkpoint with a
classification head (--fairseq_head's, as `convert` reads it). Each text is a command-line
argument or a line of --input; a tab splits it into a pair (MNLI's premise and hypothesis),
encoded as fine-tuning encodes it, `<s> A </s></s> B </s>`. Where the checkpoint names its
task (GLUE), a single text for a pair task, or a pair for a single-sentence task, is refused
with FILE:LINE. A text longer than the model's positions is truncated as fine-tuning
truncates it (the longer text of a pair first); each such row says so, and the count is printed.

Each prediction is `label` and its probability `score` (softmax over the classes, float32),
with `scores` for every class, the fields transformers' pipeline returns (with top_k=None for
all). Label names come from the checkpoint (robertax's "labels", Hugging Face's id2label), else
from its GLUE task, else LABEL_i as transformers names them. A regression head (STS-B) gives
its raw output as `score` (transformers' pipeline would put it through a sigmoid). Multiple-
choice (RACE) and span (SQuAD) models are refused: they do not classify a text.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robertax import cli, hf
from robertax.model import RobertaForSequenceClassification
from robertax.tasks import glue, starting_point

class Classifier:
    """A sentence classifier and its tokenizer, loaded once: `predict(texts)`."""

    def __init__(self, path: str, tokenizer: Optional[str] = None):
        def has_classifier(params, meta):
            if "classifier" not in params:
                raise ValueError(f"{path}: no sentence classifier in this checkpoint (it has "
                                 f"{sorted(params)}); fine-tune one first (robertax.finetune)")
            if hf.multiple_choice(meta):
                raise ValueError(f"{path}: a multiple-choice model (RACE scores each option "
                                 "of a question), not a sentence classifier")

        self.config, params, self.tokenizer, meta = starting_point.load_for_inference(
            path, tokenizer, check_params=has_classifier)
        self.params = {"encoder": params["encoder"], "classifier": params["classifier"]}
        self.num_labels = int(np.shape(params["classifier"]["out"]["bias"])[0])
        self.task = _glue_task(meta)
        self.regression = self.num_labels == 1
        self.labels = _label_names(meta, self.task, self.num_labels)
        module = RobertaForSequenceClassification(self.config, self.num_labels)

        @jax.jit
        def outputs(p, ids, mask):  # [B, classes] probabilities, or [B, 1] regression scores
            z = module.apply({"params": p}, ids, mask).astype(jnp.float32)
            return z if self.regression else jax.nn.softmax(z)

        self._outputs = outputs

    @property
    def pairs(self) -> Optional[bool]:
        """Whether the checkpoint's task takes pairs (None: the checkpoint does not say)."""
        return None if self.task is None else self.task.text_b is not None

    def encode(self, text: str, where: str = "") -> tuple[list[int], bool]:
        """(ids, truncated): `<s> A </s>` or, for "A<tab>B", `<s> A </s></s> B </s>`."""
        where = where or repr(text[:40])
        parts = text.split("\t")
        if len(parts) > 2:
            raise ValueError(f"{where}: {len(parts) - 1} tabs; a text is one sentence, or two "
                             "separated by one tab")
        if any(not p.strip() for p in parts):
            raise ValueError(f"{where}: an empty text")
        if self.pairs is not None and self.pairs != (len(parts) == 2):
            want = "pairs (two texts separated by a tab)" if self.pairs else "single texts"
            raise ValueError(f"{where}: {self.task.name} takes {want}, not "
                             f"{'a pair' if len(parts) == 2 else 'one text'}")
        a = self.tokenizer.encode_plain(parts[0])
        b = self.tokenizer.encode_plain(parts[1]) if len(parts) == 2 else None
        ids = glue.encode_pair(self.tokenizer, a, b, self.config.max_length)
        full = len(a) + (2 if b is None else len(b) + 4)
        return ids, full > len(ids)

    def predict(self, texts: Sequence[str], batch_size: int = 32,
                where: Optional[Sequence[str]] = None) -> list[dict]:
        """One dict a text: `label`, `score`, `scores` (label -> probability) and `truncated`;
        for a regression head `score` only (and `truncated`). `where` names each text in errors
        (say, FILE:LINE)."""
        encoded = [self.encode(t, where[i] if where else "") for i, t in enumerate(texts)]
        ids = [e[0] for e in encoded]
        outputs: list[Optional[np.ndarray]] = [None] * len(ids)
        for rows, padded, mask in starting_point.inference_batches(
                ids, batch_size, self.config.max_length, self.tokenizer.pad_id):
            with jax.default_matmul_precision("highest"):
                out = np.asarray(self._outputs(self.params, padded, mask))
            for r, i in enumerate(rows):
                outputs[i] = out[r]
        return [self._row(o, truncated) for o, (_, truncated) in zip(outputs, encoded)]

    def _row(self, out: np.ndarray, truncated: bool) -> dict:
        if self.regression:
            return {"score": float(out[0]), "truncated": truncated}
        best = int(np.argmax(out))  # out: the class probabilities
        return {"label": self.labels[best], "score": float(out[best]),
                "scores": {name: float(x) for name, x in zip(self.labels, out)},
                "truncated": truncated}


def _glue_task(meta: dict) -> Optional[glue.Task]:
    task, _ = starting_point.head_origin(meta)
    if task is None:
        return None
    try:
        return glue.get_task(task)
    except ValueError:
        return None  # another task's name (say, a Hugging Face model's own): no pair check


def _label_names(meta: dict, task: Optional[glue.Task], n: int) -> list[str]:
    _, labels = starting_point.head_origin(meta)
    if labels and len(labels) == n:
        return labels
    if task is not None and task.labels and len(task.labels) == n:
        return list(task.labels)
    return [f"LABEL_{i}" for i in range(n)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m robertax.classify",
                                     description=__doc__.split("\n")[0])
    cli.add_model_args(parser, "a fine-tuned classifier: robertax workdir or model dir, "
                       "Hugging Face or fairseq")
    parser.add_argument("--input", default=None, help="a text file, one text (or tab-separated "
                        "pair) a line")
    parser.add_argument("--output", default=None, help="a .jsonl to write, one prediction a "
                        "line, in the texts' order")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("texts", nargs="*", help="texts (or --input); a tab splits a pair")
    args = parser.parse_args(argv)
    with cli.bad_input_exits():  # bad input: the message says what and where
        texts, where = cli.texts_from(args.input, args.texts,
                                      "one text, or a tab-separated pair, a line")
        classifier = Classifier(args.model, args.tokenizer)
        rows = classifier.predict(texts, args.batch_size, where)
        if args.output:
            cli.write_jsonl(args.output, rows)
    for row, text in zip(rows, texts):
        shown = text.replace("\t", " | ")
        shown = shown if len(shown) <= 70 else shown[:67] + "..."
        label = "" if classifier.regression else f"{row['label']:<16} "
        print(f"{label}{row['score']:.4f}  {shown}{'  (truncated)' if row['truncated'] else ''}")
    cut = [w for w, row in zip(where, rows) if row["truncated"]]
    if cut:
        print(f"{len(cut)} of {len(rows)} texts truncated to the model's "
              f"{classifier.config.max_length} tokens: {cli.some(cut)}")
    if args.output:
        print(f"{len(rows)} prediction{'s' if len(rows) != 1 else ''} written to {args.output}")


if __name__ == "__main__":
    main(sys.argv[1:])
