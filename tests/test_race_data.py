"""RACE: the folder and TFDS readers, blank filling, and [N, 4, L] featurization."""

import json
import re

import numpy as np
import pytest

from robertax.tasks import race


class WordTokenizer:
    """Test double of robertax.tokenizer's interface: one id per whitespace-separated word."""

    bos_id, pad_id, eos_id, unk_id, mask_id = 0, 1, 2, 3, 4

    def __init__(self):
        self.vocab = {}

    def encode_plain(self, text):
        return [self.vocab.setdefault(w, 5 + len(self.vocab)) for w in re.findall(r"\S+", text)]


@pytest.fixture(scope="module")
def race_dir(test_data):
    return test_data / "race" / "RACE"


def test_read_dir_dev(race_dir):
    dev = race.read_dir(race_dir, "dev")
    # high/73 (1 question), high/80 (5), then middle/13 (5), middle/34 (4), middle/73 (2).
    assert len(dev) == 17
    assert [ex.id for ex in dev[:3]] == ["high73.txt-0", "high80.txt-0", "high80.txt-1"]
    assert [ex.label for ex in dev[1:6]] == [2, 3, 2, 0, 1]  # C D C A B
    ex = dev[1]
    assert ex.question == "According to this passage, we can know that Jeannie is Lee Ann's  _  ."
    assert ex.options == ("servant", "daughter", "dog", "mother")
    assert ex.article.startswith("Lee Ann Laraway has polio")
    assert race.read_dir(race_dir, "validation") == dev


def test_read_dir_order_and_levels(race_dir):
    test = race.read_dir(race_dir, "test")
    # Numeric file order (98 before 122), high before middle.
    files = list(dict.fromkeys(ex.id.rsplit("-", 1)[0] for ex in test))
    assert files == ["high98.txt", "high122.txt", "middle1.txt", "middle9.txt", "middle70.txt"]
    assert len(test) == 22 and len(race.read_dir(race_dir, "train")) == 22
    middle = race.read_dir(race_dir, "train", levels=("middle",))
    assert len(middle) == 10 and all(ex.id.startswith("middle") for ex in middle)


@pytest.mark.parametrize("change, message", [
    (lambda r: r["answers"].__setitem__(1, "E"), r"question 1 has answer 'E', expected A-D"),
    (lambda r: r["options"][0].pop(), r"question 0 has 3 options, expected 4"),
    (lambda r: r["answers"].pop(), r"5 questions, 5 option lists and 4 answers"),
    (lambda r: r.pop("article"), r"not a RACE passage, missing 'article'"),
])
def test_malformed_files_name_file_and_question(race_dir, tmp_path, change, message):
    record = json.loads((race_dir / "dev" / "high" / "80.txt").read_text())
    change(record)
    folder = tmp_path / "dev" / "high"
    folder.mkdir(parents=True)
    (folder / "5.txt").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"5.txt: " + message):
        race.read_dir(tmp_path, "dev", levels=("high",))
    (folder / "5.txt").write_text('{"article":\n\n oops}')
    with pytest.raises(ValueError, match=r"5.txt:3: not valid JSON"):
        race.read_dir(tmp_path, "dev", levels=("high",))


def test_question_option_fills_blanks_like_fairseq():
    assert race.question_option("Jeannie is Lee Ann's  _  .", "dog") == "Jeannie is Lee Ann's dog ."
    assert race.question_option("Jeannie can do all EXCEPT _ .", "bring things home") == \
        "Jeannie can do all EXCEPT bring things home ."
    assert race.question_option("Which is the best title?", "Four kinds of dogs") == \
        "Which is the best title? Four kinds of dogs"
    assert race.clean_article(" A\nB  \n\n C ") == "A B C"


# ----------------------------------------------------------------------------- TFDS


def test_read_tfds_mock_rejects_random_records():
    # USE_CODE mock records are random strings (answers not A-D, counts not matching):
    # the reader must refuse them with a message naming the record, not mislabel them.
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
        with pytest.raises(ValueError, match=r"race/high test record 0: "):
            race.read_tfds("high", "test")


def test_read_tfds_converts_records(race_dir):
    tfds = pytest.importorskip("tensorflow_datasets")
    passages = [json.loads(p.read_text()) for p in sorted((race_dir / "dev" / "middle").glob("*.txt"))]
    # Records as TFDS race/middle yields them: bytes text, arrays of options.
    records = [{"example_id": p["id"].encode(), "article": p["article"].encode(),
                "questions": np.array([q.encode() for q in p["questions"]], object),
                "options": np.array([[o.encode() for o in opts] for opts in p["options"]], object),
                "answers": np.array([a.encode() for a in p["answers"]], object)} for p in passages]
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_data_source_fn=lambda self, split, **kw: records):
        examples = race.read_tfds("middle", "dev")
    expected = [ex for p in passages for ex in race._examples(p, "x")]
    assert len(examples) == 11 and examples == expected
    with pytest.raises(ValueError, match="configs"):
        race.read_tfds("all", "test")


# ---------------------------------------------------------------------- featurization


def test_featurize_layout_and_truncation():
    tok = WordTokenizer()
    ex = race.Example("x-0", "p1 p2 p3 p4 p5 p6 p7 p8", "Pick _ now", ("a", "b c", "d", "e"), 3)
    out = race.featurize([ex], tok, max_length=12, max_option_length=3)
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == mask.shape == (1, 4, 12) and out["labels"].tolist() == [3]
    v = tok.vocab
    # Choice 0: "Pick a now" (3 tokens) -> passage keeps 12 - 3 - 4 = 5 tokens.
    assert ids[0, 0].tolist() == [0, v["p1"], v["p2"], v["p3"], v["p4"], v["p5"], 2, 2,
                                  v["Pick"], v["a"], v["now"], 2]
    # Choice 1: "Pick b c now" is cut to its first 3 tokens.
    assert ids[0, 1, 8:].tolist() == [v["Pick"], v["b"], v["c"], 2]
    assert mask.sum() == 4 * 12
    # Padding to the longest row: the whole passage fits (8 + 3 + 4 specials), except in the
    # row of a longer option, which sets the length and pads the others with id 1.
    long = race.Example("x-1", ex.article, "Pick", ("a", "b", "c", "d e"), 0)
    short = race.featurize([long], tok, max_length=64, max_option_length=8, pad_to_longest=True)
    assert short["input_ids"].shape == (1, 4, 15)
    assert short["input_ids"][0, 0, 14] == 1 and short["attention_mask"][0, :, 14].tolist() == [0, 0, 0, 1]
    with pytest.raises(ValueError, match="max_length"):
        race.featurize([ex], tok, max_length=100, max_option_length=128)


def test_featurize_with_the_real_tokenizer(test_data, race_dir):
    tokenizer = pytest.importorskip("robertax.tokenizer")
    tok = tokenizer.load(str(test_data / "bpe" / "roberta-base_hf"))
    dev = race.read_dir(race_dir, "dev")
    out = race.featurize(dev, tok)  # paper setting: 512 total, 128 for question + option
    ids = out["input_ids"]
    assert ids.shape == (17, 4, 512) and out["labels"].tolist()[1:6] == [2, 3, 2, 0, 1]
    ex = dev[1]
    passage = tok.encode_plain(race.clean_article(ex.article))
    for j, option in enumerate(ex.options):
        qa = tok.encode_plain(race.question_option(ex.question, option))
        row = [0, *passage[: 512 - len(qa) - 4], 2, 2, *qa, 2]
        assert ids[1, j, : len(row)].tolist() == row
        assert (ids[1, j, len(row):] == 1).all()
    assert tok.decode(tok.encode_plain(race.question_option(ex.question, "dog"))) == \
        "According to this passage, we can know that Jeannie is Lee Ann's dog ."
