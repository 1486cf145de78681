"""robertax.classify against transformers' text-classification pipeline, on Hugging Face,
robertax and fairseq checkpoints, and its command line."""

import json
import shutil

import numpy as np
import pytest
import torch
import transformers

from robertax import checkpoint, classify, convert
from robertax.tasks import glue

NLI = ("contradiction", "neutral", "entailment")


@pytest.fixture(scope="module")
def nli_dir(random_hf_roberta, tmp_path_factory):
    """A random RobertaForSequenceClassification with MNLI's three labels named in id2label."""
    return random_hf_roberta(tmp_path_factory.mktemp("nli"), head="classifier", labels=NLI)


SINGLES = ["The capital of France is Paris.", "Hello", "A longer text, with a few more words "
           "in it than the others have, so that the batch pads the short ones."]
PAIRS = [("A man is playing a guitar.", "Someone plays music."),
         ("Hello", "A second text, longer than the first one.")]


def _pipeline(path):
    tok = transformers.RobertaTokenizer(vocab=str(path / "vocab.json"),
                                        merges=str(path / "merges.txt"))
    model = transformers.RobertaForSequenceClassification.from_pretrained(path).eval()
    return transformers.pipeline("text-classification", model=model, tokenizer=tok,
                                 device="cpu")


def test_predictions_equal_transformers_pipeline(nli_dir):
    """Texts and pairs, batched and padded two ways: the same label, probability and every
    class's probability as `pipeline("text-classification", top_k=None)`."""
    pipe = _pipeline(nli_dir)
    clf = classify.Classifier(str(nli_dir))
    assert clf.labels == list(NLI) and clf.pairs is None and not clf.regression
    texts = SINGLES + ["\t".join(p) for p in PAIRS]
    inputs = SINGLES + [{"text": a, "text_pair": b} for a, b in PAIRS]
    for batch_size in (8, 2):
        got = clf.predict(texts, batch_size=batch_size)
        for text, row in zip(inputs, got):
            want = {r["label"]: r["score"] for r in pipe(text, top_k=None)}
            assert row["label"] == max(want, key=want.get) and not row["truncated"], text
            assert list(row["scores"]) == list(NLI)
            np.testing.assert_allclose([row["scores"][k] for k in NLI],
                                       [want[k] for k in NLI], rtol=1e-4, atol=1e-6)
            assert row["score"] == row["scores"][row["label"]]
    # the probabilities are not all alike (the check above would be weak otherwise)
    assert len({r["label"] for r in got}) > 1 or np.ptp([r["score"] for r in got]) > 0.05


def test_regression_head_gives_its_raw_output(random_hf_roberta, tmp_path):
    """A one-output head (STS-B's shape): `score` is the model's output itself."""
    path = random_hf_roberta(tmp_path / "reg", head="classifier", labels=("LABEL_0",))
    model = transformers.RobertaForSequenceClassification.from_pretrained(path).eval()
    tok = transformers.RobertaTokenizer(vocab=str(path / "vocab.json"),
                                        merges=str(path / "merges.txt"))
    clf = classify.Classifier(str(path))
    assert clf.regression
    got = clf.predict(["\t".join(PAIRS[0]), SINGLES[0]])
    with torch.no_grad():
        want = [model(**tok(*PAIRS[0], return_tensors="pt")).logits[0, 0].item(),
                model(**tok(SINGLES[0], return_tensors="pt")).logits[0, 0].item()]
    assert [set(r) for r in got] == [{"score", "truncated"}] * 2
    np.testing.assert_allclose([r["score"] for r in got], want, rtol=1e-4, atol=1e-5)


def _robertax_dir(hf_dir, path, meta):
    """The HF classifier's weights as a fine-tuning run saves its best/ model."""
    cfg, params = convert.from_hf(str(hf_dir))
    checkpoint.save_model(str(path), cfg, params, meta)
    (path / "tokenizer").mkdir(parents=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(hf_dir / name, path / "tokenizer" / name)
    return path


def test_fine_tuned_glue_model_on_the_command_line(nli_dir, tmp_path, capsys):
    """A robertax fine-tuning workdir (MNLI, its labels in its own order): pairs from a file,
    one JSON line each, the labels the checkpoint names; a too-long pair is truncated as
    fine-tuning truncates it and reported; a single sentence is refused with FILE:LINE."""
    order = ["entailment", "neutral", "contradiction"]  # its output units' names
    path = tmp_path / "run"  # a fine-tuning workdir: its model is best/
    _robertax_dir(nli_dir, path / "best", {"task": "MNLI", "labels": order})
    (path / "results.json").write_text("{}")
    long_b = " ".join(["word"] * 80)
    src = tmp_path / "pairs.tsv"
    src.write_text("".join(f"{a}\t{b}\n" for a, b in PAIRS) + f"Short premise.\t{long_b}\n")
    out = tmp_path / "p.jsonl"
    classify.main(["--model", str(path), "--input", str(src), "--output", str(out)])
    printed = capsys.readouterr().out.splitlines()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and [r["truncated"] for r in rows] == [False, False, True]
    assert all(list(r["scores"]) == order for r in rows)
    assert printed[0].split()[0] == rows[0]["label"] and "|" in printed[0]
    assert printed[2].endswith("(truncated)")
    assert printed[3] == f"1 of 3 texts truncated to the model's 64 tokens: {src}:3"
    assert printed[4] == f"3 predictions written to {out}"
    # the same numbers as transformers on the same (truncated) ids
    model = transformers.RobertaForSequenceClassification.from_pretrained(nli_dir).eval()
    clf = classify.Classifier(str(path))
    for (a, b), row in zip(PAIRS + [("Short premise.", long_b)], rows):
        tok = clf.tokenizer
        ids = glue.encode_pair(tok, tok.encode_plain(a), tok.encode_plain(b), 64)
        assert len(ids) <= 64
        with torch.no_grad():
            p = torch.softmax(model(torch.tensor([ids])).logits[0], -1).numpy()
        want = dict(zip(order, p))  # output unit i is what the checkpoint calls order[i]
        np.testing.assert_allclose([row["scores"][k] for k in order], [want[k] for k in order],
                                   rtol=1e-4, atol=1e-6)
    # MNLI takes pairs
    src.write_text(f"{PAIRS[0][0]}\t{PAIRS[0][1]}\nA lone sentence.\n")
    with pytest.raises(SystemExit, match=rf"error: {src}:2: MNLI takes pairs .*, not one text$"):
        classify.main(["--model", str(path), "--input", str(src)])


def test_single_sentence_task_and_bad_input(nli_dir, random_hf_roberta, tmp_path):
    sst = _robertax_dir(nli_dir, tmp_path / "sst", {"task": "SST-2"})  # 3 outputs: no names
    clf = classify.Classifier(str(sst))
    assert clf.pairs is False and clf.labels == ["LABEL_0", "LABEL_1", "LABEL_2"]
    with pytest.raises(ValueError, match=r"^'a\\tb': SST-2 takes single texts, not a pair$"):
        clf.predict(["a\tb"])
    src = tmp_path / "t.txt"
    for body, message in (("fine\n\nafter a gap\n", r"t.txt:2: empty line"),
                          ("a\tb\tc\n", r"t.txt:1: 2 tabs"),
                          ("a\t \n", r"t.txt:1: an empty text")):
        src.write_text(body)
        with pytest.raises(SystemExit, match="error: .*" + message):
            classify.main(["--model", str(nli_dir), "--input", str(src)])
    with pytest.raises(SystemExit, match=r"error: give texts on the command line or --input"):
        classify.main(["--model", str(nli_dir)])
    with pytest.raises(SystemExit, match=r"error: .*nowhere does not exist"):
        classify.main(["--model", str(tmp_path / "nowhere"), "a"])
    mlm = random_hf_roberta(tmp_path / "mlm")
    with pytest.raises(SystemExit, match=r"error: .*mlm: no sentence classifier .*mlm_head"):
        classify.main(["--model", str(mlm), "a"])
    race = _robertax_dir(nli_dir, tmp_path / "race", {"task": "RACE", "num_choices": 4})
    with pytest.raises(SystemExit, match=r"error: .*race: a multiple-choice model"):
        classify.main(["--model", str(race), "a"])


def test_fairseq_checkpoint_with_a_classification_head(nli_dir, tmp_path, capsys):
    """fairseq's model.pt with a named head (written here from the same weights): the same
    probabilities, labels LABEL_i (fairseq keeps its label names in its data dictionary)."""
    cfg, params = convert.from_hf(str(nli_dir))
    convert.write(cfg, params, str(tmp_path / "fs"), "fairseq", head="mnli")
    got = classify.Classifier(str(tmp_path / "fs" / "model.pt"), tokenizer=str(nli_dir))
    want = classify.Classifier(str(nli_dir))
    assert got.labels == ["LABEL_0", "LABEL_1", "LABEL_2"]
    a, b = (r[0] for r in (got.predict(SINGLES), want.predict(SINGLES)))
    np.testing.assert_allclose(list(a["scores"].values()), list(b["scores"].values()),
                               rtol=1e-6)
    classify.main(["--model", str(tmp_path / "fs" / "model.pt"), "--tokenizer", str(nli_dir),
                   "Hello"])
    assert capsys.readouterr().out.split()[0] in got.labels
