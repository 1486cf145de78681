"""Corpus readers, sentence splitting and `robertax.preprocess`: counts that match an independent
count, shards that read back as exactly the tokenizer's output, counted skips, re-runs, the
built-in corpus."""

import gzip
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from robertax import preprocess as preprocess_lib
from robertax import tokenizer as tokenizer_lib
from robertax import tokenizer_training
from robertax.data import builtin, shards
from robertax.data.sentences import split_sentences

SPECIAL_STRINGS = ("<s>", "</s>", "<pad>", "<unk>", "<mask>")


@pytest.fixture(scope="module")
def tok(test_data):
    return tokenizer_lib.load(str(test_data / "bpe" / "roberta-base_hf"))


@pytest.fixture(scope="module")
def reference(test_data):
    """transformers' RobertaTokenizer: the independent source of token ids."""
    transformers = pytest.importorskip("transformers")
    d = test_data / "bpe" / "roberta-base_hf"
    return transformers.RobertaTokenizer(vocab=str(d / "vocab.json"), merges=str(d / "merges.txt"))


def independent_documents(path: pathlib.Path, split: bool) -> list[list[str]]:
    """Blank-line separated documents of stripped lines, written out here without robertax's reader.

    split: each line becomes its sentences, each after the first keeping the whitespace before it
    (preprocessing's rule for byte-level BPE, where "ĠThe" inside a paragraph is not "The"); a
    later line of a document starts after one space (split or not)."""
    docs, doc = [], []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.strip():
            parts = split_sentences(line.strip(), keep_whitespace=True) if split else [line.strip()]
            doc += [" " + parts[0] if doc else parts[0]] + parts[1:]
        elif doc:
            docs.append(doc)
            doc = []
    return docs + ([doc] if doc else [])


def read_split(out_dir, split) -> list[list[list[int]]]:
    """Documents of a split, read back from the shards through the index."""
    data = shards.ShardedCorpus(str(out_dir), split)
    bounds = data.index.doc_offsets()
    records = data.sentences(0, data.index.num_sentences) if data.index.num_sentences else []
    assert [len(r) for r in records] == data.index.sentence_lengths.tolist()
    return [[r.tolist() for r in records[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]


def check_against(out_dir, manifest, docs, reference):
    """Manifest counts = the independent count; shards = the reference ids, documents in order."""
    sentences = [s for d in docs for s in d]
    assert not any(s in x for x in sentences for s in SPECIAL_STRINGS)  # so transformers' ids are literal
    ids = reference(sentences, add_special_tokens=False)["input_ids"]
    splits = manifest["splits"]
    assert manifest["input"]["documents"] == len(docs) == splits["train"]["documents"] + splits["valid"]["documents"]
    assert manifest["input"]["sentences"] == len(sentences) == splits["train"]["sentences"] + splits["valid"]["sentences"]
    assert sum(map(len, ids)) == splits["train"]["tokens"] + splits["valid"]["tokens"]
    assert not any(manifest["skipped"].values())
    expected, pos = [], 0
    for d in docs:
        expected.append(ids[pos:pos + len(d)])
        pos += len(d)
    train, valid = read_split(out_dir, "train"), read_split(out_dir, "valid")
    assert valid and valid[0] == expected[0]  # the corpus's first document always goes to valid
    it, iv = 0, 0  # the two splits interleave back into the input, in order
    for doc in expected:
        if it < len(train) and train[it] == doc:
            it += 1
        else:
            assert iv < len(valid) and valid[iv] == doc
            iv += 1
    assert (it, iv) == (len(train), len(valid))


def test_split_sentences():
    assert split_sentences("Mr. Smith arrived at 5 p.m. on Monday. He left.") == \
        ["Mr. Smith arrived at 5 p.m. on Monday.", "He left."]
    assert split_sentences('J. R. R. Tolkien wrote it. "Really?" she asked. Yes!') == \
        ["J. R. R. Tolkien wrote it.", '"Really?" she asked.', "Yes!"]
    assert split_sentences("Pi is 3.14 here. The U.S. Army e.g. this. lower. case") == \
        ["Pi is 3.14 here.", "The U.S. Army e.g. this. lower. case"]
    assert split_sentences("这是第一句。这是第二句！第三句？") == ["这是第一句。", "这是第二句！", "第三句？"]
    assert split_sentences('He said "Go." Then (see Fig. 3) left... Done') == \
        ['He said "Go."', "Then (see Fig. 3) left...", "Done"]
    assert split_sentences("  ") == [] and split_sentences("No end") == ["No end"]
    # keep_whitespace: later sentences keep the whitespace before them, nothing is lost.
    assert split_sentences(" A cat.  C dog!\tEnd. ", keep_whitespace=True) == ["A cat.", "  C dog!", "\tEnd."]
    assert split_sentences("Kouros). The statue", keep_whitespace=True) == ["Kouros).", " The statue"]
    # No cut where GPT-2's pre-tokenizer would not split: CJK stop + punctuation, or \x1c.
    assert split_sentences("第一句。「第二句」。 Third.") == ["第一句。「第二句」。", "Third."]
    assert split_sentences("One.\x1cTwo.") == ["One.\x1cTwo."]


def test_split_sentences_keeps_every_character(test_data):
    for rel in ("enwiki-excerpt/articles.txt", "tinyshakespeare/input.txt"):
        for line in (test_data / "text" / rel).read_text(encoding="utf-8").split("\n"):
            kept = split_sentences(line, keep_whitespace=True)
            assert "".join(kept) == line.strip()
            assert [k.strip() for k in kept] == split_sentences(line)


def test_sentence_records_keep_the_token_stream(tmp_path, tok, test_data):
    """Per line of the Wikipedia file, the line's sentence records concatenate to the ids of the
    whole line (as fairseq encodes a line), and a document's records decode to its lines' text."""
    path = test_data / "text" / "enwiki-excerpt" / "articles.txt"
    manifest = preprocess_lib.preprocess(str(path), tok, str(tmp_path), valid_fraction=0.0)
    docs = read_split(tmp_path, "train")
    lines = independent_documents(path, split=False)
    assert len(docs) == len(lines) == manifest["input"]["documents"]
    checked = mismatched = split_lines = 0
    for records, doc_lines in zip(docs, lines):
        pos = 0
        for line in doc_lines:  # later lines already start with their one space
            expected = tok.encode_plain(line, literal=True)
            got, n = [], 0
            while len(got) < len(expected) and pos + n < len(records):
                got += records[pos + n]
                n += 1
            pos += n
            checked += 1
            split_lines += n > 1
            mismatched += got != expected
        assert pos == len(records)  # every record belongs to exactly one line
        # Lines are stripped and continue one another after a single space.
        text = "".join(doc_lines)
        assert tok.decode([i for r in records for i in r]) == text
        assert "".join(tok.decode(r) for r in records) == text
    assert (checked, mismatched) == (manifest["input"]["lines"], 0)
    assert split_lines > 1000  # many lines do hold several sentences


def test_wikipedia(tmp_path, tok, reference, test_data):
    path = test_data / "text" / "enwiki-excerpt" / "articles.txt"
    manifest = preprocess_lib.preprocess(str(path), tok, str(tmp_path), valid_fraction=0.1, seed=3)
    check_against(tmp_path, manifest, independent_documents(path, split=True), reference)
    assert manifest["format_version"] == shards.FORMAT_VERSION and manifest["token_dtype"] == "uint16"
    assert manifest["vocab_size"] == 50265
    assert manifest["special_ids"] == {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": 50264}
    assert manifest["tokenizer"]["fingerprint"] == tok.fingerprint
    assert tokenizer_lib.load(str(tmp_path / "tokenizer")).fingerprint == tok.fingerprint
    assert os.path.realpath(manifest["sources"][0]["path"]) == str(path.resolve())
    assert manifest["splits"]["valid"]["documents"] >= 2  # the forced first + ~10% of 102 by hash


def test_sentencepiece_sentences(tmp_path, test_data):
    """sentencepiece's dummy-prefix "▁" stands for the space before a later sentence (see
    SentencePieceTokenizer.continuation): the records are the line's own pieces, text is kept."""
    spm = tokenizer_training.train_sentencepiece(str(test_data / "text" / "tinyshakespeare" / "input.txt"), 1000)
    lines = ["First Citizen: Before we proceed. Hear me speak.  All: Speak, speak!", "You are all resolved? Yes."]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    manifest = preprocess_lib.preprocess(str(tmp_path / "in.txt"), spm, str(tmp_path / "out"), valid_fraction=0.0)
    assert manifest["input"]["sentences"] == 5
    (doc,) = read_split(tmp_path / "out", "train")
    assert [i for r in doc[:3] for i in r] == spm.encode_plain(lines[0], literal=True)
    assert [i for r in doc[3:] for i in r] == spm.encode_plain(lines[1], literal=True)
    assert spm.id_to_token(doc[2][0]) == "▁" and spm.id_to_token(doc[2][1]).startswith("▁")  # two spaces
    # Each line's dummy prefix reads as one space between lines.
    assert spm.decode([i for r in doc for i in r]) == " ".join(lines)
    assert spm.continuation("\tX") == "\tX" and spm.continuation("  X") == " X"


def test_shakespeare_parallel_equals_serial(tmp_path, tok, reference, test_data):
    path = test_data / "text" / "tinyshakespeare" / "input.txt"
    kw = dict(valid_fraction=0.05, split_sentences=False)
    serial = preprocess_lib.preprocess(str(path), tok, str(tmp_path / "serial"), **kw)
    check_against(tmp_path / "serial", serial, independent_documents(path, split=False), reference)
    parallel = preprocess_lib.preprocess(str(path), tok, str(tmp_path / "par"), num_processes=2,
                                         chunk_bytes=150_000, **kw)
    assert len(parallel["splits"]["train"]["shards"]) > 1  # the file was cut into several units
    for split in ("train", "valid"):
        assert read_split(tmp_path / "par", split) == read_split(tmp_path / "serial", split)
        assert parallel["splits"][split]["tokens"] == serial["splits"][split]["tokens"]


def test_rerun_is_noop_and_conflicts_are_refused(tmp_path, tok, test_data):
    path = str(test_data / "text" / "tinyshakespeare" / "input.txt")
    first = preprocess_lib.preprocess(path, tok, str(tmp_path), valid_fraction=0.05)
    shard = tmp_path / first["splits"]["train"]["shards"][0]
    mtime = shard.stat().st_mtime_ns
    start = time.time()
    assert preprocess_lib.preprocess(path, tok, str(tmp_path), valid_fraction=0.05) == first
    assert time.time() - start < 1.0 and shard.stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="other inputs or settings"):
        preprocess_lib.preprocess(path, tok, str(tmp_path), valid_fraction=0.2)
    other = preprocess_lib.preprocess(path, tok, str(tmp_path), valid_fraction=0.2, overwrite=True)
    assert other["splits"]["valid"]["documents"] > first["splits"]["valid"]["documents"]
    assert sorted(p.name for p in tmp_path.glob("*.array_record")) == \
        sorted(other["splits"]["train"]["shards"] + other["splits"]["valid"]["shards"])


def write_bad_corpus(root: pathlib.Path) -> None:
    lines = [
        "\ufeffFirst document. It has two lines.",  # 1: a byte-order mark
        "Second line of the first document.",  # 2
        "",  # 3
        b"Bad \xff\xfe bytes here.",  # 4: invalid UTF-8 (skipped line)
        "The rest of document two survives.\r",  # 5: CRLF
        "  \t ",  # 6: whitespace only: a boundary
        "x" * 5000,  # 7: too long (skipped line)
        "\u00a0\u3000",  # 8: only Unicode spaces: a boundary
        b"\xc3\x28 only an invalid line",  # 9: a document that loses its only line
        "",  # 10
        "Literal <s> and <mask> stay text in a corpus.",  # 11
    ]
    with open(root / "a.txt", "wb") as f:
        for line in lines:
            f.write((line if isinstance(line, bytes) else line.encode("utf-8")) + b"\n")
    with gzip.open(root / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("Gzipped document one.\n\n\nGzipped document two. Two sentences.\n")


def test_bad_input_is_counted_and_located(tmp_path, tok):
    write_bad_corpus(tmp_path)
    out = tmp_path / "out"
    manifest = preprocess_lib.preprocess(str(tmp_path / "*.txt*"), tok, str(out), valid_fraction=0.0,
                                         max_line_bytes=4096, chunk_bytes=64)
    a = str(tmp_path / "a.txt")
    assert [s["path"] for s in manifest["sources"]] == [a, str(tmp_path / "b.txt.gz")]
    assert manifest["skipped"] == {"invalid_utf8_line": 2, "line_too_long": 1, "invalid_utf8_document": 0,
                                   "empty_document": 2, "empty_sentence": 0}
    assert manifest["skipped_examples"] == {"invalid_utf8_line": [f"{a}:4", f"{a}:9"], "line_too_long": [f"{a}:7"],
                                            "empty_document": [f"{a}:7", f"{a}:9"]}
    assert manifest["input"] == {"documents": 7, "lines": 9, "lines_kept": 6, "sentences": 8}
    preprocess_lib.check_counts(manifest)
    docs = read_split(out, "train")
    texts = [[tok.decode(s) for s in d] for d in docs]
    assert texts == [["First document.", " It has two lines.", " Second line of the first document."],
                     ["The rest of document two survives."],
                     ["Literal <s> and <mask> stay text in a corpus."],
                     ["Gzipped document one."], ["Gzipped document two.", " Two sentences."]]
    assert not any(set(s) & tok.special_ids for d in docs for s in d)
    assert manifest["splits"]["valid"]["documents"] == 0 and manifest["splits"]["valid"]["shards"] == []


def test_missing_and_malformed_inputs(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        preprocess_lib.preprocess(str(tmp_path / "nothing-here.txt"), tok, str(tmp_path / "o1"))
    with pytest.raises(FileNotFoundError, match=r"no file matches .*\*\.none"):
        preprocess_lib.preprocess(str(tmp_path / "*.none"), tok, str(tmp_path / "o2"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken}\n')
    with pytest.raises(ValueError, match=rf"{bad}:2: not valid JSON"):
        preprocess_lib.preprocess(str(bad), tok, str(tmp_path / "o3"), fmt="jsonl")
    bad.write_text('{"text": "fine"}\n\n{"body": "no text"}\n')
    with pytest.raises(KeyError, match=rf"{bad}:3: no field 'text' \(has \['body'\]\)"):
        preprocess_lib.preprocess(str(bad), tok, str(tmp_path / "o4"), fmt="jsonl")


def test_jsonl(tmp_path, tok):
    path = tmp_path / "docs.jsonl"
    records = [{"body": "One paragraph. Two sentences.\n\nA second paragraph.", "id": 1},
               {"body": "   "}, {"body": "Third document."}]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    manifest = preprocess_lib.preprocess(str(path), tok, str(tmp_path / "out"), fmt="jsonl",
                                         text_key="body", valid_fraction=0.0)
    assert manifest["input"] == {"documents": 3, "lines": 3, "lines_kept": 3, "sentences": 4}
    assert manifest["skipped"]["empty_document"] == 1
    assert [[tok.decode(s) for s in d] for d in read_split(tmp_path / "out", "train")] == \
        [["One paragraph.", " Two sentences.", " A second paragraph."], ["Third document."]]


def test_tfds_mock(tmp_path, tok):
    tfds = pytest.importorskip("tensorflow_datasets")
    import tensorflow_datasets.text  # noqa: F401 -- registers wikipedia when TF is absent
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        expected = [tfds.data_source("wikipedia/20230601.en", split="train")[i]["text"] for i in range(12)]
        manifest = preprocess_lib.preprocess("wikipedia/20230601.en", tok, str(tmp_path), fmt="tfds",
                                             valid_fraction=0.0, split_sentences=False)
    assert manifest["sources"][0]["tfds"] == "wikipedia/20230601.en"
    docs = read_split(tmp_path, "train")
    kept = [t.strip() for t in expected if t.strip()]
    assert manifest["input"]["documents"] == 12 and manifest["splits"]["train"]["documents"] == len(kept)
    assert [d[0] for d in docs] == tok.encode_batch_plain(kept, literal=True)


def test_cli(tmp_path, test_data):
    repo = str(pathlib.Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", "")}
    src = tmp_path / "in.txt"
    src.write_text("Hello there. General Kenobi.\n\nA second document.\n")
    out = subprocess.run([sys.executable, "-m", "robertax.preprocess", f"--input={src}",
                          f"--tokenizer={test_data / 'bpe' / 'gpt2_bpe'}", f"--output={tmp_path / 'out'}",
                          "--valid_fraction=0", "--num_processes=1"],
                         check=True, capture_output=True, text=True, env=env).stdout
    assert "train: 2 documents, 3 sentences" in out
    assert shards.read_manifest(str(tmp_path / "out"))["splits"]["train"]["sentences"] == 3


def test_builtin_corpus(tmp_path):
    start = time.time()
    first = builtin.ensure_builtin(str(tmp_path / "a"), vocab_size=4096)
    assert time.time() - start < 60
    start = time.time()
    assert builtin.ensure_builtin(str(tmp_path / "a"), vocab_size=4096) == first
    assert time.time() - start < 0.5
    manifest = shards.read_manifest(first)
    assert manifest["vocab_size"] == 4096 and manifest["token_dtype"] == "uint16"
    assert manifest["splits"]["train"]["tokens"] > 300_000 and manifest["splits"]["valid"]["documents"] > 0
    tok = tokenizer_lib.load(os.path.join(first, "tokenizer"))
    assert tok.fingerprint == manifest["tokenizer"]["fingerprint"] and tok.mask_id == 4095
    # Deterministic: a fresh cache builds the same tokenizer and the same shards.
    second = builtin.ensure_builtin(str(tmp_path / "b"), vocab_size=4096)
    assert shards.read_manifest(second)["tokenizer"]["fingerprint"] == tok.fingerprint
    for split in ("train", "valid"):
        a = shards.read_index(os.path.join(first, f"{split}.index.npz"))
        b = shards.read_index(os.path.join(second, f"{split}.index.npz"))
        assert np.array_equal(a.sentence_lengths, b.sentence_lengths)
        assert np.array_equal(a.doc_sentences, b.doc_sentences)
