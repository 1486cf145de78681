"""Fine-tuning and pretraining data from prepared TensorFlow Datasets (`data_dir="tfds"`,
`--format=tfds`): the errors a user sees, and which datasets and splits the tasks ask for.

Real TFDS data cannot be prepared here (no network); `tfds_source.open_source` is replaced by
a fake holding records as prepared TFDS datasets give them (bytes text, shuffled order)."""

import importlib
import json
import logging

import numpy as np
import pytest

from robertax import tokenizer as tokenizer_lib
from robertax.data import tfds_source
from robertax.tasks import glue, race, runner

# The split names of the TFDS builders (tensorflow_datasets glue, race and squad).
SPLITS = {"glue/mnli": ("train", "validation_matched", "validation_mismatched", "test_matched",
                        "test_mismatched"),
          "glue/ax": ("test",), "glue/sst2": ("train", "validation", "test"),
          "race/high": ("train", "dev", "test"), "race/middle": ("train", "dev", "test")}


@pytest.fixture()
def fake_tfds(monkeypatch):
    """{(name, split): records}; open_source behaves as the real one for what is missing, and
    records each call's data_dir."""
    prepared, calls = {}, []

    def open_source(name, split, data_dir=None):
        calls.append((name, split, data_dir))
        if split not in SPLITS.get(name, ()):
            raise ValueError(f"TFDS dataset {name!r}: Unknown split {split!r}")
        if (name, split) not in prepared:
            raise tfds_source.NotPrepared(f"TFDS dataset {name!r} split {split!r} is not prepared")
        return prepared[(name, split)]

    monkeypatch.setattr(tfds_source, "open_source", open_source)
    return prepared, calls


def _config(task, **kw):
    c = importlib.import_module(f"configs.finetune.{task}").get_config()
    c.data_dir, c.tfds_data_dir, c.max_length = "tfds", "/prepared/tfds", 64
    for k, v in kw.items():
        setattr(c, k, v)
    return c


@pytest.fixture(scope="module")
def tok(test_data):
    return tokenizer_lib.load(str(test_data / "bpe" / "roberta-base_hf"))


def test_unprepared_and_unknown_datasets_say_what_to_do(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(tfds_source.NotPrepared) as e:
        tfds_source.open_source("glue/sst2", "train", str(tmp_path))
    message = str(e.value)
    assert "'glue/sst2'" in message and str(tmp_path) in message
    assert "array_record" in message and "download_and_prepare" in message
    with pytest.raises(ValueError, match="TFDS has no dataset 'no_such_dataset/x'") as e:
        tfds_source.open_source("no_such_dataset/x", "train", str(tmp_path))
    assert "\n" not in str(e.value)  # not TFDS's list of every dataset it knows


def test_records_are_read_in_chunks_in_order():
    class Source:
        def __init__(self, n):
            self.n, self.batches = n, []

        def __len__(self):
            return self.n

        def __getitems__(self, keys):
            self.batches.append(len(keys))
            return [{"i": k} for k in keys]

    source = Source(2500)
    assert [r["i"] for r in tfds_source.records(source)] == list(range(2500))
    assert source.batches == [1024, 1024, 452]
    assert [r["i"] for r in tfds_source.records(source, 1000, 1030)] == list(range(1000, 1030))
    assert [r["i"] for r in tfds_source.records([{"i": 0}, {"i": 1}])] == [0, 1]  # any Sequence


def test_race_reads_the_tfds_splits_of_both_levels(fake_tfds, test_data, tok):
    prepared, calls = fake_tfds
    dev = test_data / "race" / "RACE" / "dev"
    for level in race.LEVELS:
        prepared[(f"race/{level}", "dev")] = [
            {"example_id": f"{level}{p.name}".encode(), "article": p_["article"].encode(),
             "questions": np.array([q.encode() for q in p_["questions"]], object),
             "options": np.array([[o.encode() for o in opts] for opts in p_["options"]], object),
             "answers": np.array([a.encode() for a in p_["answers"]], object)}
            for p in sorted((dev / level).glob("*.txt"))
            for p_ in [json.loads(p.read_text(encoding="utf-8"))]]
    task = runner.make_task(_config("race", max_option_length=32))
    [es] = task.eval_sets(tok)
    want = race.read_dir(str(test_data / "race" / "RACE"), "dev")
    assert es.examples == len(want) > 0
    assert calls == [("race/high", "dev", "/prepared/tfds"), ("race/middle", "dev", "/prepared/tfds")]
    # No test split prepared: predict_test warns and scores no test set (before training).
    assert task.test_sets(tok) == []


def test_glue_skips_an_unprepared_test_set_and_keeps_the_tsv_order(fake_tfds, tok, caplog):
    prepared, calls = fake_tfds
    records = [{"idx": np.int32(i), "premise": f"Premise {i}.".encode(),
                "hypothesis": f"Hypothesis {i}.".encode(), "label": np.int64(-1)}
               for i in (2, 0, 1)]  # TFDS stores records shuffled
    prepared[("glue/mnli", "test_matched")] = records
    prepared[("glue/mnli", "test_mismatched")] = records
    assert [ex.idx for ex in glue.read_tfds("MNLI", "test_matched")] == [0, 1, 2]
    task = runner.make_task(_config("mnli"))
    calls.clear()
    with caplog.at_level(logging.WARNING):
        sets = task.test_sets(tok)
    assert [(t.name, split) for t, split, _, _ in sets] == [("MNLI", "test_matched"),
                                                            ("MNLI", "test_mismatched")]
    assert any("no AX test set" in r.getMessage() and "not prepared" in r.getMessage()
               for r in caplog.records)
    assert [c[0] for c in calls] == ["glue/mnli", "glue/mnli", "glue/ax"]
    assert {c[2] for c in calls} == {"/prepared/tfds"}  # config.tfds_data_dir
    # A split the builder does not have is an error, not a skip.
    with pytest.raises(ValueError, match="Unknown split"):
        glue.read_tfds("SST-2", "dev")
