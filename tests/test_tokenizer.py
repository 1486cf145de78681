"""robertax.tokenizer: exact RoBERTa ids (vs transformers and published vectors), both file
layouts, round trips, offsets, saving/loading, and training both kinds."""

import json
import logging
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from robertax import tokenizer as tokenizer_lib
from robertax import tokenizer_training

HANDWRITTEN = [
    "Hello world!", "Hello world! cécé herlolip 418", "", " ", "  leading and trailing  ", "\t",
    "tabs\tand\nnewlines\n\nand\r\nCRLF", "multiple     spaces   here", "emoji 👋🌍 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵",
    "中文字符和日本語のテキスト、한국어", "العربية والعبرية עברית", "Ελληνικά, кириллица, ğüşöçİ",
    "combining é vs é (NFC vs NFD)", "zero\u200bwidth\u200djoiner\ufeffbom", "math ∑∫√∞ ≠ ≤ ≥",
    "def f(x):\n    return x ** 2  # square\n", "for (int i = 0; i < n; ++i) { a[i] = b[i]; }",
    '{"key": [1, 2.5e-3, null], "s": "it\'s"}', "It's, they're, we've, I'm, he'll, she'd — 'quoted'",
    "URLs: https://example.com/path?q=1&r=2#frag and emails a.b@c.org", "1234567890 3.14159 -42 1e10",
    "ALL CAPS AND MiXeD cAsE", "A, <mask> AllenNLP sentence.", "x <s> y</s>z  <pad> <unk>",
    "\u00a0non-breaking\u00a0space\u3000ideographic", "control \x00\x01\x7f chars", "a" * 300,
]


@pytest.fixture(scope="module")
def bpe_dir(test_data):
    return test_data / "bpe"


@pytest.fixture(scope="module")
def tok(bpe_dir):
    return tokenizer_lib.load(str(bpe_dir / "roberta-base_hf"))


@pytest.fixture(scope="module")
def hf_reference(bpe_dir):
    """transformers' RobertaTokenizer as roberta-base publishes it (<mask> strips the space before it)."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import AddedToken
    d = bpe_dir / "roberta-base_hf"
    return transformers.RobertaTokenizer(
        vocab=str(d / "vocab.json"), merges=str(d / "merges.txt"),
        mask_token=AddedToken("<mask>", lstrip=True, rstrip=False, special=True, normalized=False))


@pytest.fixture(scope="module")
def texts(test_data):
    """Handwritten edge cases plus every line of the Wikipedia and Shakespeare files."""
    lines = list(HANDWRITTEN)
    for rel in ("text/enwiki-excerpt/articles.txt", "text/tinyshakespeare/input.txt"):
        lines += (test_data / rel).read_text(encoding="utf-8").split("\n")
    return lines


def test_layout_and_specials(tok):
    assert tok.kind == "byte_bpe"
    assert tok.vocab_size == 50265
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 50264)
    assert tok.special_ids == frozenset({0, 1, 2, 3, 50264})
    assert len(tok.fingerprint) == 64


def test_published_vectors(tok, bpe_dir, test_data):
    oracles = json.loads((test_data / "reference" / "roberta_oracles.json").read_text())
    for case in oracles["hf_roberta_tokenization"]["cases"]:
        assert tok.encode(case["text"]) == case["ids_with_special"], case["text"]
        if "tokens" in case:
            assert [tok.id_to_token(i) for i in case["ids_with_special"]] == case["tokens"]
    readme = oracles["fairseq_roberta_readme"]["encode_hello_world"]
    assert tok.encode(readme["text"]) == readme["ids"]
    assert tok.encode("Hello world! cécé herlolip") == oracles["hf_roberta_base_modeling"]["input_ids"][0]
    # GPT-2's own ids: same segmentation, so RoBERTa's tokens spell GPT-2's tokens.
    encoder = json.loads((bpe_dir / "gpt2_bpe" / "encoder.json").read_text(encoding="utf-8"))
    by_id = {i: t for t, i in encoder.items()}
    for case in oracles["gpt2_bpe_encoder_vectors"]["cases"]:
        ours = [tok.id_to_token(i) for i in tok.encode_plain(case["text"])]
        assert ours == [by_id[i] for i in case["ids"]], case["text"]


@pytest.fixture(scope="module")
def ours(tok, texts):
    return tok.encode_batch_plain(texts)


def test_exact_ids_vs_transformers(tok, hf_reference, texts, ours):
    theirs = hf_reference(texts, add_special_tokens=False)["input_ids"]
    mismatches = [t for t, a, b in zip(texts, ours, theirs) if a != b]
    assert not mismatches, f"{len(mismatches)} mismatches, e.g. {mismatches[:3]}"
    singles = [tok.encode(t) for t in texts[:3000]]
    assert singles == hf_reference(texts[:3000])["input_ids"]
    firsts, seconds = texts[:2000], texts[1:2001]
    pairs = [tok.encode(a, pair=b) for a, b in zip(firsts, seconds)]
    assert pairs == hf_reference(firsts, seconds)["input_ids"]
    assert tok.encode("A", pair="B") == [0, 250, 2, 2, 387, 2]


def test_fairseq_layout_gives_same_ids(tok, bpe_dir, texts, ours):
    fairseq = tokenizer_lib.load(str(bpe_dir / "gpt2_bpe"))
    # Same fingerprint = the same token->id table and merges, so the same BPE; a sample confirms it.
    assert fairseq.fingerprint == tok.fingerprint
    assert (fairseq.vocab_size, fairseq.mask_id) == (50265, 50264)
    assert fairseq.encode_batch_plain(texts[::10]) == ours[::10]


def test_decode_round_trip(tok, texts, ours):
    specials = ("<s>", "</s>", "<pad>", "<unk>", "<mask>")
    kept = [(t, ids) for t, ids in zip(texts, ours) if not any(s in t for s in specials)]
    plain = [t for t, _ in kept]
    assert [tok.decode(ids) for _, ids in kept] == plain
    assert [tok.decode(tok.encode(t), skip_special_tokens=True) for t in plain[:500]] == plain[:500]
    assert tok.decode(tok.encode("Hi")) == "<s>Hi</s>"
    # literal=True reads special-token strings as text (for corpora), so they round-trip too.
    specials = "x <s> y</s>z  <pad> <mask>"
    literal = tok.encode_plain(specials, literal=True)
    assert not set(literal) & tok.special_ids
    assert tok.decode(literal) == specials


def test_offsets_match_transformers(tok, hf_reference, texts):
    sample = [t for t in texts[:4000] if t]
    ref = hf_reference(sample, add_special_tokens=False, return_offsets_mapping=True)
    for text, ids, offsets in zip(sample, ref["input_ids"], ref["offset_mapping"]):
        assert tok.encode_with_offsets(text) == (ids, [tuple(o) for o in offsets]), text
    ids, offsets = tok.encode_with_offsets("The cat sat.")
    assert [("The cat sat.")[a:b] for a, b in offsets] == ["The", "cat", "sat", "."]


def test_word_start_table(tok):
    table = tok.word_start_table()
    assert table.shape == (50265,) and table.dtype == np.bool_
    ids = tok.encode_plain("The unbelievably\nxylophonists")
    assert [tok.id_to_token(i) for i in ids] == ["The", "Ġunbelievably", "Ċ", "x", "yl", "ophon", "ists"]
    assert table[ids].tolist() == [False, True, True, False, False, False, False]
    assert table[list(tok.special_ids)].all()


def test_save_load_and_transformers_reads_saved(tok, tmp_path, hf_reference, texts):
    tok.save(str(tmp_path))
    again = tokenizer_lib.load(str(tmp_path))
    assert again.fingerprint == tok.fingerprint and again.kind == "byte_bpe"
    import transformers
    saved = transformers.RobertaTokenizer(vocab=str(tmp_path / "vocab.json"), merges=str(tmp_path / "merges.txt"))
    sample = [t for t in texts[:500] if "<mask>" not in t]
    assert saved(sample)["input_ids"] == [again.encode(t) for t in sample]


def test_load_errors(tmp_path, bpe_dir):
    with pytest.raises(ValueError, match="no tokenizer found"):
        tokenizer_lib.load(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        tokenizer_lib.load(str(tmp_path / "missing"))
    (tmp_path / "vocab.json").write_text((bpe_dir / "roberta-base_hf" / "vocab.json").read_text())
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ t\nbad merge line\n")
    with pytest.raises(ValueError, match=r"merges.txt:3"):
        tokenizer_lib.load(str(tmp_path))


@pytest.fixture(scope="module")
def shakespeare(test_data):
    return str(test_data / "text" / "tinyshakespeare" / "input.txt")


def test_train_byte_bpe(shakespeare, tmp_path):
    tok = tokenizer_training.train_byte_bpe(shakespeare, 2000, str(tmp_path / "a"))
    assert tok.vocab_size == 2000 and tok.mask_id == 1999  # RoBERTa's layout: <mask> last
    assert [tok.id_to_token(i) for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    text = "Romeo, wherefore art thou? 😀 ünïcode"
    assert tok.decode(tok.encode_plain(text)) == text  # bytes: nothing is unknown
    assert tok.encode("a <mask> b")[2] == tok.mask_id
    again = tokenizer_training.train_byte_bpe(shakespeare, 2000)
    assert again.fingerprint == tok.fingerprint  # deterministic
    assert tokenizer_lib.load(str(tmp_path / "a")).fingerprint == tok.fingerprint


def test_sentencepiece(shakespeare, tmp_path):
    tok = tokenizer_training.train_sentencepiece(shakespeare, 1000, str(tmp_path / "spm"))
    assert tok.kind == "sentencepiece" and tok.vocab_size == 1000 and tok.mask_id == 999
    loaded = tokenizer_lib.load(str(tmp_path / "spm"))
    assert loaded.fingerprint == tok.fingerprint
    assert tokenizer_lib.load(str(tmp_path / "spm" / "spm.model")).fingerprint == tok.fingerprint
    text = "First Citizen: Before we proceed any further, hear me speak."
    plain = tok.encode_plain(text)
    assert tok.encode(text) == [0, *plain, 2]
    assert tok.encode(text, pair="Speak.") == [0, *plain, 2, 2, *tok.encode_plain("Speak."), 2]
    assert tok.decode(plain) == text
    assert tok.encode_batch_plain([text, "Speak."]) == [plain, tok.encode_plain("Speak.")]
    masked = tok.encode_plain("hear me <mask> now")
    assert tok.mask_id in masked and tok.decode(masked) == "hear me<mask> now"  # lstrip, as byte BPE
    ids, offsets = tok.encode_with_offsets("hear me <mask> now")
    assert ids == masked and "".join("hear me <mask> now"[a:b] for a, b in offsets).replace(" ", "") == "hearme<mask>now"
    assert "😀" not in tok.decode(tok.encode_plain("😀"))  # character-level: unknown characters -> <unk>
    assert tok.unk_id in tok.encode_plain("😀")
    table = tok.word_start_table()
    assert table.shape == (1000,) and table[list(tok.special_ids)].all() and 0 < table.sum() < 1000


def test_cli_train_and_encode(shakespeare, tmp_path):
    out = tmp_path / "cli"
    repo = str(pathlib.Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "robertax.tokenizer", *args], check=True,
                              capture_output=True, text=True, env=env).stdout

    run("train", f"--input={shakespeare}", "--vocab_size=600", f"--output={out}")
    tok = tokenizer_lib.load(str(out))
    assert tok.vocab_size == 600
    assert json.loads(run("encode", f"--tokenizer={out}", "To be, or not to be")) == tok.encode("To be, or not to be")


def test_sentencepiece_text_after_special_tokens_continues(shakespeare):
    """Text after a special token is a continuation: " now" -> "\u2581now" (no lone "\u2581"),
    "now" right after "<mask>" -> no word start; the ids decode back to the text."""
    tok = tokenizer_training.train_sentencepiece(shakespeare, 1000)
    pieces = lambda ids: [tok.id_to_token(i) for i in ids]  # noqa: E731
    head = tok.encode_plain("hear me")
    spaced = tok.encode_plain("hear me <mask> now")
    assert spaced == head + [tok.mask_id] + tok.encode_plain(tok.continuation(" now"))
    assert "\u2581" not in pieces(spaced) and pieces(spaced)[-1] == "\u2581now"
    assert tok.decode(spaced) == "hear me<mask> now"  # <mask> takes the space before it
    glued = tok.encode_plain("hear me <mask>now")
    assert glued[: len(head) + 1] == head + [tok.mask_id]
    assert not pieces(glued)[len(head) + 1].startswith("\u2581")
    assert tok.decode(glued) == "hear me<mask>now"
    text = "<mask> the king, <unk> <pad> now"  # a lone space between specials is kept
    ids, offsets = tok.encode_with_offsets(text)
    assert pieces(ids)[:2] == ["<mask>", "\u2581the"] and "\u2581" in pieces(ids)
    assert tok.decode(ids) == text
    assert [text[a:b] for a, b in offsets][-1] == "now"
    assert tok.decode(tok.encode("the king", pair="now"), skip_special_tokens=True) == "the kingnow"


def test_sentencepiece_vocab_size_too_large_says_the_largest(shakespeare, tmp_path):
    small = tmp_path / "small.txt"
    lines = pathlib.Path(shakespeare).read_text(encoding="utf-8").splitlines()[:200]
    small.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(SystemExit, match=r"error: vocab_size 5000 is too large for this text.*"
                                         r"largest vocab_size that works is \d+") as e:
        tokenizer_lib.main(["train", "--kind=sentencepiece", f"--input={small}",
                            "--vocab_size=5000", f"--output={tmp_path / 'out'}"])
    largest = int(str(e.value).rsplit("works is ", 1)[1].split()[0])
    assert tokenizer_training.train_sentencepiece(str(small), largest).vocab_size == largest
    with pytest.raises(ValueError, match=rf"largest vocab_size that works is {largest}\b"):
        tokenizer_training.train_sentencepiece(str(small), largest + 1)


def test_byte_bpe_short_of_the_vocab_size_warns(caplog):
    with caplog.at_level(logging.WARNING):
        tok = tokenizer_training.train_byte_bpe(iter(["To be, or not to be: that is the question."] * 3),
                                           5000)
    assert tok.vocab_size < 5000
    assert f"asked for vocab_size 5000, the text gave only {tok.vocab_size}" in caplog.text


def test_training_reads_a_tfds_dataset():
    """--format=tfds: the text of a prepared TFDS dataset, as preprocessing reads it."""
    tfds = pytest.importorskip("tensorflow_datasets")
    import tensorflow_datasets.text  # noqa: F401 -- registers wikipedia when TF is absent
    with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
        texts = [tfds.data_source("wikipedia/20230601.en", split="train")[i]["text"]
                 for i in range(20)]
        from_tfds = tokenizer_training.train_byte_bpe("wikipedia/20230601.en", 300, fmt="tfds",
                                                      min_frequency=1)
    lines = [line.strip() for t in texts for line in t.splitlines() if line.strip()]
    from_lines = tokenizer_training.train_byte_bpe(iter(lines), 300, min_frequency=1)
    assert from_tfds.fingerprint == from_lines.fingerprint


@pytest.mark.parametrize("mask_lstrip", [False, True])
def test_transformers_5_tokenizer_json(bpe_dir, tok, tmp_path, mask_lstrip):
    """transformers 5 saves tokenizer.json (+ tokenizer_config.json) only: the same ids."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import AddedToken
    d = bpe_dir / "roberta-base_hf"
    vocab = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
    merges = [tuple(line.split(" ")) for line in
              (d / "merges.txt").read_text(encoding="utf-8").splitlines()[1:] if line]
    # transformers 5's default <mask> keeps the space before it; roberta-base's strips it.
    mask = AddedToken("<mask>", lstrip=mask_lstrip, rstrip=False, special=True, normalized=False)
    theirs = transformers.RobertaTokenizerFast(vocab=vocab, merges=merges, mask_token=mask)
    theirs.save_pretrained(str(tmp_path))
    # Beside vocab.json + merges.txt (as transformers 4 saved them), tokenizer.json's <mask>
    # rule is the one transformers applies, and robertax too.
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((d / name).read_bytes())
    assert tokenizer_lib.load(str(tmp_path)).mask_lstrip == mask_lstrip
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).unlink(missing_ok=True)
    assert (tmp_path / "tokenizer.json").exists()
    ours = tokenizer_lib.load(str(tmp_path))
    assert ours.kind == "byte_bpe" and ours.mask_lstrip == mask_lstrip
    assert ours.special_tokens == tok.special_tokens == {
        "bos": theirs.bos_token_id, "pad": theirs.pad_token_id, "eos": theirs.eos_token_id,
        "unk": theirs.unk_token_id, "mask": theirs.mask_token_id}
    assert (ours.fingerprint == tok.fingerprint) == mask_lstrip  # same files, same <mask> rule
    texts = HANDWRITTEN + ["hello <mask> world", "<mask>", "a <mask><mask> b", " <mask> x"]
    assert [ours.encode(t) for t in texts] == theirs(texts)["input_ids"]
    pairs = [ours.encode(a, pair=b) for a, b in zip(texts, texts[1:])]
    assert pairs == theirs(texts[:-1], texts[1:])["input_ids"]
    ours.save(str(tmp_path / "saved"))  # and the <mask> rule survives robertax's own save
    again = tokenizer_lib.load(str(tmp_path / "saved"))
    assert again.fingerprint == ours.fingerprint
    assert again.encode(" <mask> x") == ours.encode(" <mask> x")


def test_tokenizer_json_that_differs_is_refused_and_bad_merges_name_the_files(tmp_path, bpe_dir):
    spec = {"model": {"type": "BPE", "vocab": {"<s>": 0}, "merges": []},
            "pre_tokenizer": {"type": "Metaspace"}, "normalizer": {"type": "NFKC"},
            "added_tokens": []}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"tokenizer\.json: not a RoBERTa byte-level BPE.*"
                                         r"pre_tokenizer.*Metaspace.*normalizer"):
        tokenizer_lib.load(str(tmp_path))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "vocab.json").write_text((bpe_dir / "roberta-base_hf" / "vocab.json").read_text())
    (bad / "merges.txt").write_text("#version: 0.2\n\u0101 \u0101\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{bad}/vocab\.json \+ merges\.txt: inconsistent "
                                         r"vocab/merges.*out of vocabulary"):
        tokenizer_lib.load(str(bad))
