"""GLUE task layer: the task table, TSV and TFDS readers, featurization, metrics, submissions."""

import re

import numpy as np
import pytest
from sklearn import metrics as skm

from robertax.tasks import glue


class WordTokenizer:
    """Test double of robertax.tokenizer's interface: one id per whitespace-separated word."""

    bos_id, pad_id, eos_id, unk_id, mask_id = 0, 1, 2, 3, 4

    def __init__(self):
        self.vocab = {}

    @property
    def vocab_size(self):
        return 5 + len(self.vocab)

    def encode_with_offsets(self, text):
        spans = [m.span() for m in re.finditer(r"\S+", text)]
        return [self.vocab.setdefault(text[s:e], 5 + len(self.vocab)) for s, e in spans], spans

    def encode_plain(self, text):
        return self.encode_with_offsets(text)[0]

    def encode(self, text, pair=None):
        ids = [self.bos_id, *self.encode_plain(text), self.eos_id]
        return ids + ([self.eos_id, *self.encode_plain(pair), self.eos_id] if pair is not None else [])


# ------------------------------------------------------------------------------ table


def test_table_has_the_nine_tasks_with_their_metrics():
    assert glue.GLUE_TASKS == ("CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "QNLI", "RTE", "WNLI")
    want = {"CoLA": ("mcc",), "SST-2": ("accuracy",), "MRPC": ("f1", "accuracy"),
            "STS-B": ("pearson", "spearman"), "QQP": ("accuracy", "f1"), "MNLI": ("accuracy",),
            "QNLI": ("accuracy",), "RTE": ("accuracy",), "WNLI": ("accuracy",)}
    assert {name: glue.TASKS[name].metrics for name in glue.GLUE_TASKS} == want
    mnli = glue.get_task("mnli")
    assert mnli.dev_splits == ("validation_matched", "validation_mismatched")
    assert [mnli.files[s] for s in mnli.dev_splits] == ["dev_matched.tsv", "dev_mismatched.tsv"]
    assert mnli.submission == {"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"}
    assert glue.get_task("sst2") is glue.TASKS["SST-2"] and glue.get_task("STS-B").is_regression
    with pytest.raises(ValueError, match="unknown GLUE task"):
        glue.get_task("squad")


# ---------------------------------------------------------------------------- TSV reader


@pytest.mark.parametrize("task, n, first", [
    ("CoLA", 1043, ("The sailors rode the breeze clear of the rocks.", None, 1)),
    ("SST-2", 872, ("it 's a charming and often affecting journey .", None, 1)),
    # QUOTE_NONE keeps MRPC's bare leading quote as text; the BOM does not leak into "Quality".
    ("MRPC", 408, ("He said the foodservice pie business doesn't fit the company's long-term "
                   "growth strategy.",
                   '"The foodservice pie business does not fit our long-term growth strategy.', 1)),
    ("STS-B", 1500, ("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0)),
    ("QNLI", 5463, ("What came into force after the new constitution was herald?",
                    "As of that day, the new constitution heralding the Second Republic came into force.", 0)),
    ("RTE", 277, (None, "Christopher Reeve had an accident.", 1)),
    ("WNLI", 71, ("The drain is clogged with hair. It has to be cleaned.", "The hair has to be cleaned.", 0)),
])
def test_read_dev_tsv(test_data, task, n, first):
    examples = glue.read_tsv(task, test_data / "glue", "validation")
    assert len(examples) == n
    text_a, text_b, label = first
    ex = examples[0]
    assert (ex.text_b, ex.label) == (text_b, label)
    if text_a is not None:
        assert ex.text_a == text_a
    t = glue.get_task(task)
    if t.is_regression:
        assert all(0.0 <= e.label <= 5.0 for e in examples)
    else:  # every class occurs, and only valid class ids
        assert {e.label for e in examples} == set(range(len(t.labels)))


def test_read_train_and_test_tsv(test_data):
    assert len(glue.read_tsv("CoLA", test_data / "glue", "train")) == 8551
    test = glue.read_tsv("MRPC", test_data / "glue", "test")
    assert len(test) == 1725 and all(e.label is None for e in test)
    assert [e.idx for e in test[:3]] == [0, 1, 2]
    assert test[0].text_a.startswith("PCCW's chief operating officer")


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_read_mnli_qqp_cola_test_layouts(tmp_path):
    # Real GLUE headers of the files not in the shared data (MNLI dev has 16 columns).
    mnli_header = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                   "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\t"
                   "label4\tlabel5\tgold_label\n")
    row = "\t".join(["7", "1", "1e", "fiction", "(x)", "(y)", "(X)", "(Y)", "A man sleeps.",
                     "A man is awake.", "contradiction", "contradiction", "neutral",
                     "contradiction", "contradiction", "contradiction"])
    _write(tmp_path / "MNLI" / "dev_mismatched.tsv", mnli_header + row + "\n")
    [ex] = glue.read_tsv("MNLI", tmp_path, "validation_mismatched")
    assert (ex.idx, ex.text_a, ex.text_b, ex.label) == (7, "A man sleeps.", "A man is awake.", 0)
    _write(tmp_path / "QQP" / "dev.tsv",
           "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n5\t1\t2\tWhy?\tHow?\t1\n")
    assert glue.read_tsv("QQP", tmp_path, "validation") == [glue.Example(5, "Why?", "How?", 1)]
    _write(tmp_path / "QQP" / "test.tsv", "id\tquestion1\tquestion2\n9\tWhy?\tHow?\n")
    assert glue.read_tsv("QQP", tmp_path, "test") == [glue.Example(9, "Why?", "How?", None)]
    # CoLA: train/dev have no header, its test file does.
    _write(tmp_path / "CoLA" / "test.tsv", "index\tsentence\n0\tBill left.\n1\tLeft Bill.\n")
    assert [e.text_a for e in glue.read_tsv("CoLA", tmp_path, "test")] == ["Bill left.", "Left Bill."]
    _write(tmp_path / "diagnostic" / "diagnostic.tsv", "index\tsentence1\tsentence2\n0\tA\tB\n")
    assert glue.read_tsv("AX", tmp_path, "test") == [glue.Example(0, "A", "B", None)]


@pytest.mark.parametrize("task, text, message", [
    ("RTE", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n",
     r"dev.tsv:3: expected 4 tab-separated columns, found 3"),
    ("RTE", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\tmaybe\n",
     r"dev.tsv:3: unknown RTE label 'maybe'"),
    ("CoLA", "gj04\t1\t\tFine.\ngj04\t2\t\tBad label.\n", r"dev.tsv:2: unknown CoLA label '2'"),
    ("CoLA", "gj04\t1\tFine.\n", r"dev.tsv:1: expected 4 tab-separated columns, found 3"),
    ("STS-B", "index\tsentence1\tsentence2\tscore\n0\ta\tb\thigh\n", r"dev.tsv:2: STS-B score 'high'"),
    # Scores off the 0-5 scale would otherwise surface only as a diverging loss, steps later.
    ("STS-B", "index\tsentence1\tsentence2\tscore\n0\ta\tb\t2.5\n1\ta\tb\tnan\n",
     r"dev.tsv:3: STS-B score nan is not a finite number in \[0, 5\]"),
    ("STS-B", "index\tsentence1\tsentence2\tscore\n0\ta\tb\t7.5\n", r"dev.tsv:2: .* 7.5 is not"),
    ("STS-B", "index\tsentence1\tsentence2\tscore\n0\ta\tb\t-0.1\n", r"dev.tsv:2: .* -0.1 is"),
    ("STS-B", "index\tsentence1\tsentence2\tscore\n0\ta\tb\tinf\n", r"dev.tsv:2: .* inf is not"),
    ("SST-2", "text\tlabel\nfine\t1\n", r"dev.tsv:1: header lacks column"),
])
def test_malformed_rows_name_file_and_line(tmp_path, task, text, message):
    _write(tmp_path / glue.get_task(task).name / "dev.tsv", text)
    with pytest.raises(ValueError, match=message):
        glue.read_tsv(task, tmp_path, "validation")


# --------------------------------------------------------------------------- TFDS reader


@pytest.mark.parametrize("task, split", [
    ("CoLA", "train"), ("SST-2", "validation"), ("MRPC", "validation"), ("STS-B", "validation"),
    ("QQP", "validation"), ("MNLI", "validation_matched"), ("MNLI", "validation_mismatched"),
    ("QNLI", "validation"), ("RTE", "train"), ("WNLI", "validation"), ("AX", "test"),
])
def test_read_tfds_mock(task, split):
    tfds = pytest.importorskip("tensorflow_datasets")
    import tensorflow_datasets.text  # noqa: F401  (registers glue without TensorFlow)

    t = glue.get_task(task)
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        examples = glue.read_tfds(task, split)
        raw = tfds.data_source(f"glue/{t.tfds_config}", split=split, download=False)
        raw = sorted((raw[i] for i in range(len(raw))), key=lambda r: int(r["idx"]))
    assert len(examples) == 6  # in the TSV files' order (idx), as TFDS stores them shuffled
    field_a, field_b = t.tfds_text
    for ex, r in zip(examples, raw):
        assert ex.idx == int(r["idx"]) and ex.text_a == str(r[field_a]).strip()
        assert (ex.text_b is None) == (field_b is None)
        if t.is_regression:
            assert ex.label == pytest.approx(float(r["label"]))
        else:  # same label *string*, whatever the two sources' class orders are
            assert t.labels[ex.label] == t.tfds_labels[int(r["label"])]
    if task == "MNLI":  # TFDS orders entailment first; robertax as roberta-large-mnli's head
        assert t.tfds_labels[0] == "entailment" and t.labels.index("entailment") == 2


def test_read_tfds_test_split_and_bytes():
    # Prepared TFDS data holds bytes and labels test rows -1.
    tfds = pytest.importorskip("tensorflow_datasets")
    import tensorflow_datasets.text  # noqa: F401

    records = [{"idx": np.int32(3), "premise": b" A dog runs. ", "hypothesis": "An animal moves.".encode(),
                "label": np.int64(-1)},
               {"idx": np.int32(4), "premise": b"x", "hypothesis": b"y", "label": np.int64(2)}]
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_data_source_fn=lambda self, split, **kw: records):
        examples = glue.read_tfds("MNLI", "test_matched")
    assert examples == [glue.Example(3, "A dog runs.", "An animal moves.", None),
                        glue.Example(4, "x", "y", 0)]  # TFDS 2 = contradiction = our 0


# ----------------------------------------------------------------------------- metrics


def test_compute_metrics_names_and_values():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    logits = rng.normal(size=(200, 2)) + 2.0 * np.eye(2)[y]
    p = logits.argmax(-1)
    mrpc = glue.compute_metrics("MRPC", logits, y)
    assert mrpc == pytest.approx({"f1": skm.f1_score(y, p), "accuracy": skm.accuracy_score(y, p)})
    assert glue.compute_metrics("QQP", p, y).keys() == {"accuracy", "f1"}
    assert glue.compute_metrics("CoLA", p, y) == pytest.approx({"mcc": skm.matthews_corrcoef(y, p)})
    mnli_y = rng.integers(0, 3, 50)
    assert glue.compute_metrics("MNLI", np.eye(3)[mnli_y], mnli_y) == {"accuracy": 1.0}
    scores = rng.uniform(0, 5, 40)
    stsb = glue.compute_metrics("STS-B", (scores + rng.normal(0, 1, 40))[:, None], scores)
    assert set(stsb) == {"pearson", "spearman"} and 0.5 < stsb["pearson"] < 1.0


# ------------------------------------------------------------------------- featurization


def test_featurize_pairs_truncate_the_longer_text_first():
    tok = WordTokenizer()
    examples = [glue.Example(0, "a b c d e f g h", "x y", 1),   # 8 + 2 words > 10 - 4
                glue.Example(1, "a b", "p q r s t u", 0),       # B is longer: B is cut
                glue.Example(2, "a", "x", 1)]
    out = glue.featurize(examples, tok, max_length=10)
    ids = out["input_ids"]
    assert ids.shape == (3, 10) and ids.dtype == np.int32
    w = tok.vocab
    assert ids[0].tolist() == [0, w["a"], w["b"], w["c"], w["d"], 2, 2, w["x"], w["y"], 2]
    assert ids[1].tolist() == [0, w["a"], w["b"], 2, 2, w["p"], w["q"], w["r"], w["s"], 2]
    assert ids[2].tolist() == [0, w["a"], 2, 2, w["x"], 2, 1, 1, 1, 1]  # pad id 1
    assert out["attention_mask"][2].tolist() == [1] * 6 + [0] * 4
    assert out["labels"].tolist() == [1, 0, 1] and out["labels"].dtype == np.int32
    # Pairs of equal length shorten both in turn.
    out = glue.featurize([glue.Example(0, "a b c d", "p q r s", 0)], tok, max_length=8)
    assert out["input_ids"][0].tolist() == [0, w["a"], w["b"], 2, 2, w["p"], w["q"], 2]


def test_featurize_single_sentences_regression_and_unlabelled():
    tok = WordTokenizer()
    single = glue.featurize([glue.Example(0, "one two three four", None, None)], tok, max_length=4)
    assert single["input_ids"][0].tolist() == [0, tok.vocab["one"], tok.vocab["two"], 2]
    assert single["labels"].tolist() == [-1]
    stsb = glue.featurize([glue.Example(0, "a", "b", 3.8), glue.Example(1, "a", "c", None)],
                          tok, max_length=64, pad_to_longest=True)
    assert stsb["input_ids"].shape == (2, 6)
    assert stsb["labels"].dtype == np.float32 and stsb["labels"][0] == pytest.approx(3.8)
    assert np.isnan(stsb["labels"][1])


def test_featurize_with_the_real_tokenizer(test_data):
    tokenizer = pytest.importorskip("robertax.tokenizer")
    tok = tokenizer.load(str(test_data / "bpe" / "roberta-base_hf"))
    examples = glue.read_tsv("RTE", test_data / "glue", "validation")[:16]
    out = glue.featurize(examples, tok, max_length=512)
    for row, ex in zip(out["input_ids"], examples):
        expected = tok.encode(ex.text_a, pair=ex.text_b)  # RoBERTa's <s> A </s></s> B </s>
        assert row[: len(expected)].tolist() == expected
        assert (row[len(expected):] == 1).all()
    short = glue.featurize(examples[:1], tok, max_length=24)["input_ids"][0]
    assert short[0] == 0 and short[-1] == 2 and list(short).count(2) == 3


# ---------------------------------------------------------------------------- submission


def test_write_submission_files(tmp_path, test_data):
    out = glue.write_submission("MNLI", "test_matched", np.array([0, 1, 2]), tmp_path)
    assert out.name == "MNLI-m.tsv"
    assert out.read_text() == "index\tprediction\n0\tcontradiction\n1\tneutral\n2\tentailment\n"
    mm = glue.write_submission("MNLI", "test_mismatched", np.eye(3)[[2, 2]], tmp_path)
    assert mm.name == "MNLI-mm.tsv" and mm.read_text().splitlines()[1:] == ["0\tentailment", "1\tentailment"]
    assert glue.write_submission("AX", "test", [1], tmp_path).read_text().splitlines() == \
        ["index\tprediction", "0\tneutral"]
    assert glue.write_submission("RTE", "test", [1, 0], tmp_path, indices=[4, 9]) \
        .read_text().splitlines() == ["index\tprediction", "4\tnot_entailment", "9\tentailment"]
    stsb = glue.write_submission("STS-B", "test", np.array([[-0.5], [2.25], [7.0]]), tmp_path)
    assert stsb.read_text().splitlines()[1:] == ["0\t0.000", "1\t2.250", "2\t5.000"]
    # A whole test split: one row per example, in the file's own index order.
    test = glue.read_tsv("MRPC", test_data / "glue", "test")
    path = glue.write_submission("MRPC", "test", np.ones(len(test), int), tmp_path,
                                 indices=[e.idx for e in test])
    lines = path.read_text().splitlines()
    assert path.name == "MRPC.tsv" and len(lines) == 1 + 1725 and lines[-1] == "1724\t1"
    with pytest.raises(ValueError, match="class ids"):
        glue.write_submission("RTE", "test", [2], tmp_path)


def test_dev_predictions_carry_the_gold_label():
    text = glue.format_predictions("RTE", np.array([[2.0, 1.0], [0.0, 3.0]]), [7, 8], [0, 0])
    assert text.splitlines() == ["index\tprediction\tlabel", "7\tentailment\tentailment",
                                 "8\tnot_entailment\tentailment"]
    stsb = glue.format_predictions("STS-B", np.array([[5.5], [1.0]]), None, [4.8, 0.0])
    assert stsb.splitlines()[1:] == ["0\t5.000\t4.800", "1\t1.000\t0.000"]
    with pytest.raises(ValueError, match="2 predictions for 1 labels"):
        glue.format_predictions("RTE", [0, 1], None, [0])


def test_stsb_scores_on_the_real_files_are_in_range(test_data):
    scores = [ex.label for split in ("train", "validation")
              for ex in glue.read_tsv("STS-B", test_data / "glue", split)]
    assert len(scores) == 5749 + 1500 and min(scores) == 0.0 and max(scores) == 5.0
