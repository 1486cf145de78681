"""SQuAD: official-script scoring on published leaderboard predictions, readers, windows, decoding."""

import collections
import copy
import json
import logging
import re
import string

import numpy as np
import pytest

from robertax.tasks import squad

# Published scores of the BERT ensemble (Google AI) on SQuAD v1.1 dev, rounded to 3 decimals
# (SQuAD-explorer; shared/data/README.md). Used when roberta_oracles.json lacks its SQuAD block.
BERT_ENSEMBLE_V11_DEV = {"exact_match": 86.206, "f1": 92.196}


class WordTokenizer:
    """Test double of robertax.tokenizer's interface: one id per whitespace-separated word."""

    bos_id, pad_id, eos_id, unk_id, mask_id = 0, 1, 2, 3, 4

    def __init__(self):
        self.vocab = {}

    def encode_with_offsets(self, text):
        spans = [m.span() for m in re.finditer(r"\S+", text)]
        return [self.vocab.setdefault(text[s:e], 5 + len(self.vocab)) for s, e in spans], spans

    def encode_plain(self, text):
        return self.encode_with_offsets(text)[0]


# ------------------------------------------------------------------ literal reference
# An independent, deliberately literal transcription of the official evaluate-v1.1.py and
# evaluate-v2.0.py semantics (same function structure and arithmetic), kept separate from
# robertax's implementation so the comparison can catch a slip in either.


def ref_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def ref_v11(dataset, predictions):
    def f1_score(prediction, ground_truth):
        prediction_tokens = ref_normalize_answer(prediction).split()
        ground_truth_tokens = ref_normalize_answer(ground_truth).split()
        common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
        num_same = sum(common.values())
        if num_same == 0:
            return 0
        precision = 1.0 * num_same / len(prediction_tokens)
        recall = 1.0 * num_same / len(ground_truth_tokens)
        return (2 * precision * recall) / (precision + recall)

    def exact_match_score(prediction, ground_truth):
        return ref_normalize_answer(prediction) == ref_normalize_answer(ground_truth)

    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue  # unanswered: scores 0
                ground_truths = [x["text"] for x in qa["answers"]]
                prediction = predictions[qa["id"]]
                exact_match += max(exact_match_score(prediction, gt) for gt in ground_truths)
                f1 += max(f1_score(prediction, gt) for gt in ground_truths)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


def ref_v20(dataset, preds):
    def get_tokens(s):
        if not s:
            return []
        return ref_normalize_answer(s).split()

    def compute_exact(a_gold, a_pred):
        return int(ref_normalize_answer(a_gold) == ref_normalize_answer(a_pred))

    def compute_f1(a_gold, a_pred):
        gold_toks = get_tokens(a_gold)
        pred_toks = get_tokens(a_pred)
        common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
        num_same = sum(common.values())
        if len(gold_toks) == 0 or len(pred_toks) == 0:
            return int(gold_toks == pred_toks)
        if num_same == 0:
            return 0
        precision = 1.0 * num_same / len(pred_toks)
        recall = 1.0 * num_same / len(gold_toks)
        return (2 * precision * recall) / (precision + recall)

    qid_to_has_ans = {}
    exact_scores, f1_scores = {}, {}
    for article in dataset:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                qid = qa["id"]
                qid_to_has_ans[qid] = bool(qa["answers"])
                gold_answers = [a["text"] for a in qa["answers"] if ref_normalize_answer(a["text"])]
                if not gold_answers:
                    gold_answers = [""]
                a_pred = preds[qid]
                exact_scores[qid] = max(compute_exact(a, a_pred) for a in gold_answers)
                f1_scores[qid] = max(compute_f1(a, a_pred) for a in gold_answers)

    def make_eval_dict(qid_list):
        total = len(qid_list)
        return {"exact": 100.0 * sum(exact_scores[k] for k in qid_list) / total,
                "f1": 100.0 * sum(f1_scores[k] for k in qid_list) / total, "total": total}

    out = make_eval_dict(list(exact_scores))
    out = {"exact_match": out["exact"], "f1": out["f1"], "total": out["total"]}
    for prefix, want in (("HasAns", True), ("NoAns", False)):
        qids = [k for k, v in qid_to_has_ans.items() if v == want]
        if qids:
            for k, v in make_eval_dict(qids).items():
                out[f"{prefix}_{k}"] = v
    return out


def _published_squad_oracle(oracles):
    """EM/F1 of the oracle file's SQuAD block (keys searched at any depth), else the README's."""
    found = {}

    def visit(node):
        if isinstance(node, dict):
            for key, value in node.items():
                name = {"exact_match": "exact_match", "em": "exact_match", "exact": "exact_match",
                        "f1": "f1"}.get(key.lower())
                if name and isinstance(value, (int, float)):
                    found.setdefault(name, value)
                visit(value)

    visit({k: v for k, v in oracles.items() if "squad" in k.lower()})
    return found if len(found) == 2 else BERT_ENSEMBLE_V11_DEV


def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def v11(test_data):
    return (_load(test_data / "squad" / "dev-v1.1.json"),
            _load(test_data / "squad" / "predictions" / "v1.1_BERT_ensemble_GoogleAI.dev-predictions.json"))


@pytest.fixture(scope="module")
def v20(test_data):
    dataset = _load(test_data / "squad" / "dev-v2.0.subset-Normans-Rhine.json")
    preds = _load(test_data / "squad" / "predictions" / "v2.0_BERT_single_GoogleAI.dev-predictions.json")
    ids = {qa["id"] for a in dataset["data"] for p in a["paragraphs"] for qa in p["qas"]}
    return dataset, {k: v for k, v in preds.items() if k in ids}


# ----------------------------------------------------------------------------- scoring


def test_v11_bert_ensemble_matches_official_scoring(v11, test_data):
    dataset, preds = v11
    ours = squad.evaluate(dataset, preds, "1.1")
    ref = ref_v11(dataset["data"], preds)
    assert set(ours) == {"exact_match", "f1"}
    for k in ours:
        assert ours[k] == pytest.approx(ref[k], abs=1e-6)
    published = _published_squad_oracle(_load(test_data / "reference" / "roberta_oracles.json"))
    assert round(ours["exact_match"], 3) == published["exact_match"]
    assert round(ours["f1"], 3) == published["f1"]
    # The list under "data" is accepted as well as the whole dict.
    assert squad.evaluate(dataset["data"], preds, "v1.1") == ours


def test_v20_subset_matches_official_scoring(v20):
    dataset, preds = v20
    assert len(preds) == 706
    ours = squad.evaluate(dataset, preds, "2.0")
    ref = ref_v20(dataset["data"], preds)
    assert ours.keys() == ref.keys()
    for k in ours:
        assert ours[k] == pytest.approx(ref[k], abs=1e-6), k
    assert (ours["total"], ours["HasAns_total"], ours["NoAns_total"]) == (706, 386, 320)


def test_scoring_on_perturbed_predictions_matches_reference(v20):
    # Exercise every branch: empty answers on answerable questions, texts on unanswerable
    # ones, partial overlaps, articles/punctuation only.
    dataset, preds = v20
    rng = np.random.default_rng(0)
    pool = ["", "the", "a .", "Normandy", "the Rhine river", "10th century"] + list(preds.values())[:50]
    noisy = {k: (v if rng.random() < 0.3 else
                 v.split()[0] if v and rng.random() < 0.5 else str(rng.choice(pool)))
             for k, v in preds.items()}
    ours, ref = squad.evaluate(dataset, noisy, "2.0"), ref_v20(dataset["data"], noisy)
    for k in ours:
        assert ours[k] == pytest.approx(ref[k], abs=1e-6), k
    answerable = copy.deepcopy(dataset["data"])  # v1.1 rules on the answerable questions only
    for art in answerable:
        for p in art["paragraphs"]:
            p["qas"] = [qa for qa in p["qas"] if qa["answers"]]
    ours, ref = squad.evaluate(answerable, noisy, "1.1"), ref_v11(answerable, noisy)
    assert ours == pytest.approx(ref, abs=1e-6)


def test_missing_predictions_score_zero_and_are_reported(v11, caplog):
    dataset, preds = v11
    kept = dict(list(preds.items())[100:])
    with caplog.at_level(logging.WARNING, logger="robertax.tasks.squad"):
        ours = squad.evaluate(dataset, kept, "1.1")
    assert "100 of 10570 questions have no prediction" in caplog.text
    assert ours == pytest.approx(ref_v11(dataset["data"], kept), abs=1e-6)
    assert ours["exact_match"] < 86.206


def test_small_cases_and_errors():
    data = [{"paragraphs": [{"context": "x", "qas": [
        {"id": "q1", "answers": [{"text": "Denver Broncos", "answer_start": 0}]},
        {"id": "q2", "answers": []}]}]}]
    out = squad.evaluate(data, {"q1": "the Denver Broncos!", "q2": ""}, "2.0")
    assert out["HasAns_exact"] == 100.0 and out["NoAns_f1"] == 100.0
    out = squad.evaluate(data, {"q1": "Broncos", "q2": "Denver"}, "2.0")
    assert out["HasAns_f1"] == pytest.approx(100 * 2 / 3) and out["NoAns_exact"] == 0.0
    with pytest.raises(ValueError, match="q2 has no gold answer"):
        squad.evaluate(data, {"q1": "x", "q2": ""}, "1.1")
    with pytest.raises(ValueError, match="version"):
        squad.evaluate(data, {}, "3.0")


# ----------------------------------------------------------------------------- readers


def test_read_json(test_data, tmp_path):
    v1 = squad.read_json(test_data / "squad" / "dev-v1.1.json")
    assert len(v1) == 10570 and v1[0].id == "56be4db0acb8001400a502ec"
    assert v1[0].title == "Super_Bowl_50" and v1[0].answers[0] == "Denver Broncos"
    assert all(ex.context[s:s + len(t)] == t for ex in v1[:500]
               for t, s in zip(ex.answers, ex.answer_starts))
    v2 = squad.read_json(test_data / "squad" / "dev-v2.0.subset-Normans-Rhine.json")
    assert len(v2) == 706 and sum(ex.is_impossible for ex in v2) == 320
    assert all(ex.answers == () for ex in v2 if ex.is_impossible)
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [\n{"paragraphs": [\n}')
    with pytest.raises(ValueError, match=r"bad.json:3: not valid JSON"):
        squad.read_json(bad)
    bad.write_text(json.dumps({"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "q"}]}]}]}))
    with pytest.raises(ValueError, match=r"bad.json: data\[0\].paragraphs\[0\].qas\[0\]: malformed"):
        squad.read_json(bad)


@pytest.mark.parametrize("version", ["1.1", "2.0"])
def test_read_tfds_mock(version):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        examples = squad.read_tfds(version, "validation")
        raw = tfds.data_source(f"squad/v{version}", split="validation", download=False)
        raw = [raw[i] for i in range(len(raw))]
    assert len(examples) == 4
    for ex, r in zip(examples, raw):
        assert (ex.id, ex.context, ex.question) == (str(r["id"]), str(r["context"]), str(r["question"]))
        assert ex.answers == tuple(str(t) for t in r["answers"]["text"])
        assert ex.answer_starts == tuple(int(s) for s in r["answers"]["answer_start"])
        assert ex.is_impossible == bool(r.get("is_impossible", False))
    # Gold from TFDS can be scored through the official layout.
    gold = squad.as_official(examples, version)
    assert squad.evaluate(gold, {ex.id: (ex.answers or ("",))[0] for ex in examples},
                          version)["exact_match"] == 100.0


# ------------------------------------------------------------------ windows and decoding


def _long_example():
    words = [f"w{i}" for i in range(40)]
    context = " ".join(words)
    start = context.index("w25")
    return squad.Example("long", "", context, "which one ?", ("w25 w26",), (start,))


def test_featurize_windows_positions_and_offsets():
    tok = WordTokenizer()
    ex = _long_example()
    f = squad.featurize([ex], tok, max_length=16, doc_stride=5, max_query_length=2)
    # Query keeps 2 tokens; 16 - 2 - 4 = 10 context tokens per window, starts 0, 5, ..., 30.
    assert len(f) == 7 and f.input_ids.shape == (7, 16)
    q = [tok.vocab["which"], tok.vocab["one"]]
    for w in range(7):
        row = f.input_ids[w].tolist()
        assert row[:5] == [0, *q, 2, 2] and row[15] == 2
        first = ex.context[f.offsets[w, 5, 0]:f.offsets[w, 5, 1]]
        assert first == f"w{5 * w}"  # the window starts at context token 5w
        assert (f.offsets[w, :5] == -1).all() and (f.offsets[w, 15] == -1).all()
    # The answer (tokens 25-26) lies wholly in the windows starting at 20 and 25 only.
    assert f.start_positions.tolist() == [0, 0, 0, 0, 10, 5, 0]
    assert f.end_positions.tolist() == [0, 0, 0, 0, 11, 6, 0]
    assert f.is_impossible.tolist() == [1, 1, 1, 1, 0, 0, 1]
    # Every context token is "max context" in exactly one window, and in the most central one.
    owners = collections.Counter(int(f.offsets[w, t, 0]) for w in range(7) for t in range(16)
                                 if f.max_context[w, t])
    assert len(owners) == 40 and set(owners.values()) == {1}
    w25 = [w for w in range(7) for t in range(16) if f.max_context[w, t]
           and f.offsets[w, t, 0] == ex.answer_starts[0]]
    assert w25 == [4]  # window 20-29 (token 25 has 5 left / 4 right) beats 25-34 (0 / 9)


def test_decode_recovers_spans_and_applies_the_null_threshold():
    tok = WordTokenizer()
    ex = _long_example()
    other = squad.Example("short", "", "alpha beta gamma", "q", (), (), is_impossible=True)
    f = squad.featurize([ex, other], tok, max_length=16, doc_stride=5, max_query_length=2)
    s = np.zeros(f.input_ids.shape)
    e = np.zeros(f.input_ids.shape)
    for w in range(len(f)):
        s[w, f.start_positions[w]] += 5.0
        e[w, f.end_positions[w]] += 5.0
    v1 = squad.decode(s, e, f, version="1.1")
    assert v1["long"] == "w25 w26"
    v2 = squad.decode(s, e, f, version="2.0")
    # "long": null score 0 (windows without the answer have 5+5 on <s>, but the minimum over
    # windows counts) vs span 10 -> answer; "short": null 10 vs best span 0 -> "".
    assert v2 == {"long": "w25 w26", "short": ""}
    # The threshold moves the boundary: answer "short" when null wins by less than 15,
    # abstain on "long" unless the span wins by more than 20.
    assert squad.decode(s, e, f, version="2.0", null_threshold=15.0)["short"] != ""
    assert squad.decode(s, e, f, version="2.0", null_threshold=-20.0)["long"] == ""
    # Spans longer than max_answer_length are never proposed.
    assert squad.decode(s, e, f, max_answer_length=1)["long"] != "w25 w26"


def test_leading_spaces_of_questions_are_dropped(test_data):
    # Ten dev-v1.1 questions start with spaces; byte-level BPE would encode them differently
    # (" Where" is "ĠWhere", a space more a token more). Hugging Face's run_qa.py strips them;
    # so does featurize.
    tok = pytest.importorskip("robertax.tokenizer").load(str(test_data / "bpe" / "roberta-base_hf"))
    examples = squad.read_json(test_data / "squad" / "dev-v1.1.json")
    spaced = [ex for ex in examples if ex.question != ex.question.lstrip()]
    assert len(spaced) == 10
    ex = spaced[0]
    clean = squad.Example(ex.id, ex.title, ex.context, ex.question.lstrip(), ex.answers,
                          ex.answer_starts)
    assert tok.encode_plain(ex.question) != tok.encode_plain(clean.question)
    a, b = (squad.featurize([e], tok, max_length=384) for e in (ex, clean))
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    np.testing.assert_array_equal(a.start_positions, b.start_positions)


def test_oracle_logits_reproduce_gold_with_the_real_tokenizer(test_data):
    tokenizer = pytest.importorskip("robertax.tokenizer")
    tok = tokenizer.load(str(test_data / "bpe" / "roberta-base_hf"))
    path = test_data / "squad" / "dev-v2.0.subset-Normans-Rhine.json"
    examples = squad.read_json(path)
    f = squad.featurize(examples, tok, max_length=384, doc_stride=128, max_query_length=64)
    rows = np.arange(len(f))
    ids = f.input_ids
    assert (ids[:, 0] == 0).all() and ((ids == 1) == (f.attention_mask == 0)).all()
    first = examples[0]
    q = tok.encode_plain(first.question)
    assert ids[0, : len(q) + 3].tolist() == [0, *q, 2, 2]
    s = np.full(ids.shape, -10.0)
    e = np.full(ids.shape, -10.0)
    s[rows, f.start_positions] = 10.0
    e[rows, f.end_positions] = 10.0
    result = squad.evaluate(_load(path), squad.decode(s, e, f, version="2.0"), "2.0")
    # Token-level spans hold the gold text except where an answer exceeds 30 tokens.
    assert result["NoAns_exact"] == 100.0 and result["HasAns_exact"] > 99.5
