"""Answer questions from a context with a model fine-tuned on SQuAD, as transformers'
"question-answering" pipeline does.

    python -m robertax.answer --model=PATH [--tokenizer=DIR] [--output=ANSWERS.jsonl]
        (--question=Q --context=C | --input=FILE.jsonl)

PATH is a checkpoint with a span head: a SQuAD fine-tuning workdir (its best/) or model dir, or
a Hugging Face `RobertaForQuestionAnswering` directory. --input holds one JSON object a line,
{"question": ..., "context": ..., "id": ... (optional)}. Questions and contexts are encoded and
decoded as fine-tuning's evaluation does them (`tasks/squad.py`): `<s> question </s></s>
context </s>`, a long context in windows of the model's length, `--doc_stride` tokens apart,
and BERT's n-best search for the best span of at most `--max_answer_length` tokens. Each answer
is the span's text, its character offsets in the context (`context[start:end]`) and `score`,
its start + end logit. A question longer than --max_query_length tokens keeps its first ones,
as in fine-tuning, and is reported. A SQuAD v2.0 model (one with the answerable classifier)
also gives `no_answer_score` (the smallest logit(no) - logit(yes) over the windows) and answers
"" where it exceeds `--null_threshold`, as fine-tuning's evaluation does; a span head alone
(SQuAD v1.1, a Hugging Face model) always answers with its best span.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

import jax
import numpy as np

from robertax import cli
from robertax.model import RobertaForQuestionAnswering
from robertax.tasks import squad, starting_point

_BUCKET = 32  # batches are cut to a multiple of this many tokens (fewer compilations)


class Answerer:
    """A span-extraction checkpoint and its tokenizer, loaded once:
    `answer(questions, contexts)`."""

    def __init__(self, path: str, tokenizer: Optional[str] = None):
        def has_span_head(params, meta):
            if "span" not in params:
                raise ValueError(f"{path}: no span head (SQuAD) in this checkpoint (it has "
                                 f"{sorted(params)}); fine-tune one first (robertax.finetune "
                                 "with configs/finetune/squad_v1.py or squad_v2.py)")

        self.config, params, self.tokenizer, _ = starting_point.load_for_inference(
            path, tokenizer, check_params=has_span_head)
        self.v2 = "answerable" in params
        self.params = {k: params[k] for k in ("encoder", "span", "answerable") if k in params}
        module = RobertaForQuestionAnswering(self.config, answerable_head=self.v2)
        self._run = jax.jit(lambda p, ids, mask: module.apply({"params": p}, ids, mask))

    def answer(self, questions: Sequence[str], contexts: Sequence[str], *,
               doc_stride: int = 128, max_query_length: int = 64, max_answer_length: int = 30,
               n_best: int = 20, null_threshold: float = 0.0, batch_size: int = 16,
               where: Optional[Sequence[str]] = None) -> list[dict]:
        """One dict a question: `answer`, `start`, `end` (character offsets in its context;
        -1 where the answer is ""), `score` (None where no span is valid: "" then),
        `question_truncated` (the question kept only its first `max_query_length` tokens, as
        fine-tuning keeps them) and for a v2.0 model `no_answer_score`. `where`
        names each question in errors (say, FILE:LINE)."""
        if len(questions) != len(contexts):
            raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        examples = []
        for i, (q, c) in enumerate(zip(questions, contexts)):
            name = where[i] if where else f"question {i + 1}"
            for field, text in (("question", q), ("context", c)):
                if not isinstance(text, str) or not text.strip():
                    raise ValueError(f"{name}: an empty {field}")
            examples.append(squad.Example(str(i), "", c, q, (), ()))
        feats = squad.featurize(examples, self.tokenizer, max_length=self.config.max_length,
                                doc_stride=doc_stride, max_query_length=max_query_length)
        F, L = feats.input_ids.shape
        start = np.full((F, L), -1e9)  # columns past a batch's longest row: never chosen
        end = np.full((F, L), -1e9)
        answerable = np.zeros((F, 2))
        lengths = feats.attention_mask.sum(1)
        for lo in range(0, F, batch_size):
            rows = slice(lo, lo + batch_size)
            n = min(-(-int(lengths[rows].max()) // _BUCKET) * _BUCKET, L)
            with jax.default_matmul_precision("highest"):
                out = self._run(self.params, feats.input_ids[rows, :n],
                                feats.attention_mask[rows, :n])
            start[rows, :n] = np.asarray(out.start_logits)
            end[rows, :n] = np.asarray(out.end_logits)
            if self.v2:
                answerable[rows] = np.asarray(out.answerable_logits)
        spans = squad.best_spans(start, end, feats, n_best, max_answer_length)
        null = squad.no_answer_margins(answerable, feats) if self.v2 else None
        results = []
        for e, span in enumerate(spans):
            row = {"answer": span.text, "start": span.start, "end": span.end,
                   "score": None if span.score == -np.inf else span.score,  # None: no span
                   "question_truncated": feats.question_truncated[e]}
            if null is not None:
                row["no_answer_score"] = float(null[e])
                if null[e] > null_threshold:
                    row.update(answer="", start=-1, end=-1)
            results.append(row)
        return results


def read_questions(path: str) -> tuple[list[str], list[str], list[str], list[str]]:
    """(questions, contexts, ids, where) from a JSON-lines file; bad lines name FILE:LINE."""
    questions, contexts, ids, where = [], [], [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            here = f"{path}:{n}"
            if not line.strip():
                raise ValueError(f"{here}: empty line (one JSON object a line)")
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{here}: not JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not {"question", "context"} <= set(obj):
                raise KeyError(f"{here}: needs \"question\" and \"context\"")
            questions.append(obj["question"])
            contexts.append(obj["context"])
            ids.append(str(obj.get("id", n)))
            where.append(here)
    if not questions:
        raise ValueError(f"{path}: no questions")
    return questions, contexts, ids, where


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m robertax.answer",
                                     description=__doc__.split("\n")[0])
    cli.add_model_args(parser, "a SQuAD model: robertax workdir or model dir, or Hugging "
                       "Face")
    parser.add_argument("--question", default=None)
    parser.add_argument("--context", default=None)
    parser.add_argument("--input", default=None, help="a .jsonl file: {\"question\", "
                        "\"context\", \"id\"} a line")
    parser.add_argument("--output", default=None, help="a .jsonl to write, one answer a line "
                        "(with its id), in the input's order")
    parser.add_argument("--doc_stride", type=int, default=128)
    parser.add_argument("--max_query_length", type=int, default=64)
    parser.add_argument("--max_answer_length", type=int, default=30)
    parser.add_argument("--n_best", type=int, default=20)
    parser.add_argument("--null_threshold", type=float, default=0.0)
    parser.add_argument("--batch_size", type=int, default=16)
    args = parser.parse_args(argv)
    with cli.bad_input_exits():  # bad input: the message says what and where
        one = args.question is not None or args.context is not None
        if one == bool(args.input) or (one and (args.question is None or args.context is None)):
            raise ValueError("give --question and --context, or --input=FILE.jsonl (one of them)")
        if args.input:
            questions, contexts, ids, where = read_questions(args.input)
        else:
            questions, contexts, ids, where = [args.question], [args.context], ["1"], ["--question"]
        answerer = Answerer(args.model, args.tokenizer)
        rows = answerer.answer(questions, contexts, doc_stride=args.doc_stride,
                               max_query_length=args.max_query_length,
                               max_answer_length=args.max_answer_length, n_best=args.n_best,
                               null_threshold=args.null_threshold,
                               batch_size=args.batch_size, where=where)
        if args.output:
            cli.write_jsonl(args.output, [{"id": qid, **row} for qid, row in zip(ids, rows)])
    for question, row in zip(questions, rows):
        shown = question if len(question) <= 60 else question[:57] + "..."
        score = "no span" if row["score"] is None else f"score {row['score']:.3f}"
        extra = (f", no-answer {row['no_answer_score']:.3f}" if "no_answer_score" in row else "")
        print(f"{shown}\n  -> {row['answer']!r}  ({score}{extra})")
    cut = [w for w, row in zip(where, rows) if row["question_truncated"]]
    if cut:
        print(f"{len(cut)} of {len(rows)} questions cut to their first {args.max_query_length} "
              f"tokens (--max_query_length): {cli.some(cut)}")
    if args.output:
        print(f"{len(rows)} answer{'s' if len(rows) != 1 else ''} written to {args.output}")


if __name__ == "__main__":
    main(sys.argv[1:])
