"""robertax.answer against transformers' RobertaForQuestionAnswering (transformers 5 has no
question-answering pipeline: its span search is written out here) and against fine-tuning's own
SQuAD v2.0 evaluation, and its command line."""

import json

import numpy as np
import pytest
import torch
import transformers

from robertax import answer
from robertax.tasks import squad

CONTEXT = "The Eiffel Tower was completed in 1889 and stands in Paris, on the Champ de Mars."
QUESTIONS = ["When was the tower completed?", "Where is it?", "What is it made of?"]


@pytest.fixture(scope="module")
def qa_dir(random_hf_roberta, tmp_path_factory):
    return random_hf_roberta(tmp_path_factory.mktemp("qa"), head="qa")


def _reference(qa_dir, question, context, max_answer_length=30):
    """transformers' logits, the best span over every (start, end) pair of context tokens."""
    tok = transformers.RobertaTokenizer(vocab=str(qa_dir / "vocab.json"),
                                        merges=str(qa_dir / "merges.txt"))
    model = transformers.RobertaForQuestionAnswering.from_pretrained(qa_dir).eval()
    enc = tok(question, context, return_offsets_mapping=True, return_tensors="pt")
    offsets = enc.pop("offset_mapping")[0].tolist()
    in_context = [i for i, s in enumerate(enc.sequence_ids(0)) if s == 1]
    with torch.no_grad():
        out = model(**enc)
    s, e = out.start_logits[0].numpy(), out.end_logits[0].numpy()
    score, i, j = max((s[i] + e[j], i, j) for i in in_context for j in in_context
                      if i <= j < i + max_answer_length)
    return context[offsets[i][0]:offsets[j][1]], offsets[i][0], offsets[j][1], float(score)


def test_answers_equal_transformers_best_span(qa_dir):
    """A Hugging Face RobertaForQuestionAnswering: with the n-best search made exhaustive, the
    same span, offsets and score as transformers' logits give; batched two ways."""
    a = answer.Answerer(str(qa_dir))
    assert not a.v2
    want = [_reference(qa_dir, q, CONTEXT) for q in QUESTIONS]
    assert len({w[0] for w in want}) > 1  # the random model does not answer alike
    for batch_size in (16, 2):
        got = a.answer(QUESTIONS, [CONTEXT] * 3, n_best=1000, batch_size=batch_size)
        for row, (text, start, end, score) in zip(got, want):
            assert (row["answer"], row["start"], row["end"]) == (text, start, end)
            assert CONTEXT[row["start"]:row["end"]] == row["answer"]
            np.testing.assert_allclose(row["score"], score, rtol=1e-5, atol=1e-5)
            assert "no_answer_score" not in row


@pytest.fixture(scope="module")
def squad_v2_run(pretrained, test_data, tmp_path_factory):
    """A tiny SQuAD v2.0 fine-tuning run (answerable head) on 12 dev questions, long contexts
    cut into several 128-token windows 64 tokens apart."""
    import importlib

    from robertax import finetune
    dev = str(test_data / "squad" / "dev-v2.0.subset-Normans-Rhine.json")
    c = importlib.import_module("configs.finetune.squad_v2").get_config()
    c.init_checkpoint, c.train_file, c.eval_file = pretrained, dev, dev
    c.max_length, c.doc_stride, c.max_train_examples, c.max_eval_examples = 128, 64, 16, 12
    c.max_steps, c.batch_size, c.eval_batch_size = 2, 8, 16
    c.log_every, c.progress, c.eval_every, c.precision = 1, False, -1, "float32"
    workdir = tmp_path_factory.mktemp("squad_v2")
    finetune.finetune(c, str(workdir))
    return workdir, squad.read_json(dev)[:12]


def test_v2_workdir_answers_as_fine_tuning_evaluates(squad_v2_run, tmp_path, capsys):
    """The run's workdir: the same answers as its predictions.json and the same no-answer
    scores as its null_odds.json, from the command line with a JSON-lines file; the threshold
    decides "" as fine-tuning's does."""
    workdir, examples = squad_v2_run
    predictions = json.load(open(workdir / "predictions.json"))
    null_odds = json.load(open(workdir / "null_odds.json"))
    src = tmp_path / "q.jsonl"
    src.write_text("".join(json.dumps({"id": ex.id, "question": ex.question,
                                       "context": ex.context}) + "\n" for ex in examples))
    out = tmp_path / "a.jsonl"
    answer.main(["--model", str(workdir), "--input", str(src), "--output", str(out),
                 "--doc_stride", "64", "--batch_size", "5"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [ex.id for ex in examples]
    assert {r["id"]: r["answer"] for r in rows} == predictions
    np.testing.assert_allclose([r["no_answer_score"] for r in rows],
                               [null_odds[ex.id] for ex in examples], rtol=1e-5, atol=1e-5)
    a = answer.Answerer(str(workdir))
    assert any(len(squad.featurize([ex], a.tokenizer, 128, 64)) > 1
               for ex in examples[:3])  # some contexts span several windows
    for r, ex in zip(rows, examples):
        if r["answer"]:
            assert ex.context[r["start"]:r["end"]] == r["answer"]
        else:
            assert (r["start"], r["end"]) == (-1, -1)
    printed = capsys.readouterr().out
    assert printed.count("  -> ") == 12 and printed.endswith(f"12 answers written to {out}\n")
    qs, cs = [ex.question for ex in examples], [ex.context for ex in examples]
    always = a.answer(qs, cs, doc_stride=64, null_threshold=1e9)
    never = a.answer(qs, cs, doc_stride=64, null_threshold=-1e9)
    assert all(r["answer"] for r in always) and not any(r["answer"] for r in never)


def test_bad_input_is_refused(qa_dir, random_hf_roberta, tmp_path, capsys):
    src = tmp_path / "q.jsonl"
    ok = json.dumps({"question": "Where?", "context": CONTEXT})
    for body, message in ((ok + "\n\n", r"q.jsonl:2: empty line"),
                          (ok + "\n{not json\n", r"q.jsonl:2: not JSON"),
                          (json.dumps({"question": "Where?"}) + "\n",
                           r'q.jsonl:1: needs "question" and "context"'),
                          (json.dumps({"question": " ", "context": CONTEXT}) + "\n",
                           r"q.jsonl:1: an empty question")):
        src.write_text(body)
        with pytest.raises(SystemExit, match="error: .*" + message):
            answer.main(["--model", str(qa_dir), "--input", str(src)])
    # a question past --max_query_length keeps its first tokens and is reported
    answer.main(["--model", str(qa_dir), "--question", "Where is the tower that was completed "
                 "in 1889?", "--context", CONTEXT, "--max_query_length", "4"])
    assert capsys.readouterr().out.endswith(
        "1 of 1 questions cut to their first 4 tokens (--max_query_length): --question\n")
    rows = answer.Answerer(str(qa_dir)).answer(QUESTIONS, [CONTEXT] * 3, max_query_length=5)
    assert [r["question_truncated"] for r in rows] == [True, False, True]  # 6, 4, 6 tokens
    with pytest.raises(SystemExit, match=r"error: give --question and --context, or --input"):
        answer.main(["--model", str(qa_dir), "--question", "Where?"])
    mlm = random_hf_roberta(tmp_path / "mlm")
    with pytest.raises(SystemExit, match=r"error: .*mlm: no span head \(SQuAD\)"):
        answer.main(["--model", str(mlm), "--question", "Where?", "--context", CONTEXT])
