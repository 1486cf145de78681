"""Tokenizers for robertax: RoBERTa's byte-level BPE and the paper's sentencepiece BPE alternative.

Both kinds share one interface and RoBERTa's special-token layout, `<s>`=0 `<pad>`=1 `</s>`=2
`<unk>`=3, and `<mask>` as the last id (50264 in RoBERTa's 50,265-unit vocabulary).

    tok = robertax.tokenizer.load(path)      # robertax, Hugging Face, fairseq/GPT-2 or spm files
    tok.encode("Hello world!")               # [0, 31414, 232, 328, 2]
    tok.encode("A", pair="B")                # <s> A </s></s> B </s>

`load` accepts a directory saved by robertax (`robertax_tokenizer.json` names the kind), a
Hugging Face directory (`vocab.json` + `merges.txt`, or transformers 5's `tokenizer.json`), a
fairseq/GPT-2 directory (`encoder.json` + `vocab.bpe` + `dict.txt`: GPT-2 ids are mapped
through `dict.txt` as fairseq's Dictionary does) or a sentencepiece `.model` (file or
directory). The byte-level BPE runs on Hugging Face `tokenizers` (Rust). Training
(tokenizer_training.py: `train_byte_bpe`, `train_sentencepiece`) has the CLI
`python -m robertax.tokenizer train --kind=byte_bpe --input='corpus/*.txt' --vocab_size=50265 --output=DIR`.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import sys
from typing import Iterable, Sequence

import numpy as np

from robertax import cli

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0..3, as fairseq's Dictionary
MASK = "<mask>"
CONFIG_FILE = "robertax_tokenizer.json"
SPM_FILE = "spm.model"
# Bytes whose GPT-2 byte-to-unicode stand-ins (chr(256 + b) for b <= 32) mark a token that starts
# after whitespace, i.e. a new word: space, \t, \n, \v, \f, \r.
_WORD_START_CHARS = frozenset(chr(256 + b) for b in (32, 9, 10, 11, 12, 13))


class _Base:
    """What both kinds share: special ids, RoBERTa's framing of single texts and pairs."""

    kind: str
    vocab_size: int
    mask_id: int
    bos_id, pad_id, eos_id, unk_id = 0, 1, 2, 3

    @property
    def special_ids(self) -> frozenset:
        return frozenset((self.bos_id, self.pad_id, self.eos_id, self.unk_id, self.mask_id))

    @property
    def special_tokens(self) -> dict:
        return {"bos": self.bos_id, "pad": self.pad_id, "eos": self.eos_id, "unk": self.unk_id,
                "mask": self.mask_id}

    def encode(self, text: str, pair: str | None = None) -> list[int]:
        """`<s> A </s>`, or `<s> A </s></s> B </s>` with a pair, as RoBERTa."""
        ids = [self.bos_id, *self.encode_plain(text), self.eos_id]
        if pair is not None:
            ids += [self.eos_id, *self.encode_plain(pair), self.eos_id]
        return ids

    def encode_plain(self, text: str, *, literal: bool = False) -> list[int]:
        return self.encode_batch_plain([text], literal=literal)[0]

    def continuation(self, text: str) -> str:
        """What to encode for a piece of a paragraph that follows another piece: a sentence after
        the first of its line, which starts with the whitespace separating it from the previous
        sentence (`robertax.data.sentences.split_sentences(keep_whitespace=True)`).

        Byte-level BPE: the text as it is. A word's leading space is part of its token ("ĠThe")
        and GPT-2's pre-tokenizer splits before that whitespace anyway, so the pieces' ids
        concatenate to exactly the paragraph's ids. See `SentencePieceTokenizer.continuation`.
        """
        return text

    def _config(self) -> dict:
        return {"kind": self.kind, "format": 1, "vocab_size": self.vocab_size,
                "special_ids": self.special_tokens, "fingerprint": self.fingerprint}

    def __repr__(self):
        return f"<{type(self).__name__} {self.kind} vocab_size={self.vocab_size} {self.fingerprint[:12]}>"


class ByteBPETokenizer(_Base):
    """GPT-2/RoBERTa byte-level BPE on Hugging Face `tokenizers`, identical to RobertaTokenizer.

    `vocab` maps byte-level token strings to robertax ids (specials included); ids need not be
    dense (RoBERTa reserves 50261-50263 for fairseq's madeupwords), `vocab_size` is max id + 1.
    `mask_lstrip`: whether "<mask>" in a text absorbs the space before it (roberta-base's
    published tokenizer; transformers 5's RobertaTokenizer default does not). `source` names
    the files in messages.
    """

    kind = "byte_bpe"

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]], *,
                 mask_lstrip: bool = True, source: str = "vocab/merges"):
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

        for i, tok in enumerate(SPECIALS):
            if vocab.get(tok) != i:
                raise ValueError(f"{source}: the vocabulary must map {tok!r} to {i} (RoBERTa's "
                                 f"layout), got {vocab.get(tok)!r}")
        if MASK not in vocab:
            raise ValueError(f"{source}: the vocabulary has no {MASK!r} token")
        self.vocab = dict(vocab)
        self.merges = [tuple(m) for m in merges]
        self.mask_id = vocab[MASK]
        self.mask_lstrip = bool(mask_lstrip)
        self.vocab_size = max(vocab.values()) + 1
        try:
            model = models.BPE(vocab=self.vocab, merges=self.merges, fuse_unk=False)
        except Exception as e:  # tokenizers names the bad merge; say which files it came from
            raise ValueError(f"{source}: inconsistent vocab/merges: {e}") from e
        tok = Tokenizer(model)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        # Trims the leading space out of offsets, as RobertaTokenizer(trim_offsets=True) does:
        # SQuAD answer starts then land on the word, not on the space before it.
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True,
                                                          add_prefix_space=False)
        # `<mask>` absorbs the space before it (lstrip), as in roberta-base's published tokenizer:
        # "A, <mask> AllenNLP" -> [..., 6, 50264, ...].
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS]
                               + [AddedToken(MASK, lstrip=self.mask_lstrip, special=True,
                                             normalized=False)])
        self._tok = tok
        self._literal_tok = None
        # (the default mask_lstrip leaves the fingerprints of earlier saves as they were)
        payload = json.dumps([self.kind, sorted(self.vocab.items(), key=lambda kv: kv[1]), self.merges]
                             + ([] if self.mask_lstrip else [{"mask_lstrip": False}]),
                             ensure_ascii=False)
        self.fingerprint = hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _hf(self, literal: bool):
        if not literal:
            return self._tok
        if self._literal_tok is None:
            # Corpus text is encoded literally, as fairseq's preprocessing does: an HTML "<s>" in
            # a web page must become characters, not a begin-of-sequence id inside a sentence.
            from tokenizers import Tokenizer
            self._literal_tok = Tokenizer.from_str(self._tok.to_str())
            self._literal_tok.encode_special_tokens = True
        return self._literal_tok

    def encode_batch_plain(self, texts: Sequence[str], *, literal: bool = False) -> list[list[int]]:
        """Ids without specials. `literal=True` reads special-token strings in `texts` as text."""
        return [e.ids for e in self._hf(literal).encode_batch_fast(list(texts), add_special_tokens=False)]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids (no specials) and (char_start, char_end) of each into `text`, spaces trimmed."""
        enc = self._tok.encode(text, add_special_tokens=False)
        return enc.ids, [tuple(o) for o in enc.offsets]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(int(i))

    def word_start_table(self) -> np.ndarray:
        """[vocab_size] bool: True where a token begins after whitespace (or is special).

        For whole-word masking (robertax.data.masking). A line's first word has no space before
        it ("The"), so it is no word start by this table; a later sentence of the line keeps the
        space before it in preprocessing (`continuation`), so it starts with a word-start token
        ("ĠThe") as inside the paragraph. The masking code itself starts a word at the first
        token of an input and after any special token (`<s>`, `</s>`, padding), not at sentence
        or line boundaries: a line's first token that follows the previous line's last token in
        a block continues that word.
        """
        table = np.zeros(self.vocab_size, dtype=bool)
        for tok, i in self.vocab.items():
            table[i] = tok[:1] in _WORD_START_CHARS
        table[list(self.special_ids)] = True
        return table

    def save(self, directory: str) -> None:
        """Writes Hugging Face files (vocab.json, merges.txt) plus robertax's kind file."""
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(dict(sorted(self.vocab.items(), key=lambda kv: kv[1])), f, ensure_ascii=False)
        with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges))
        _write_config(directory, {**self._config(),
                                  **({} if self.mask_lstrip else {"mask_lstrip": False})})

    def save_for_transformers(self, directory: str, model_max_length: int | None = None) -> None:
        """`save`, plus tokenizer.json and tokenizer_config.json, so that
        `transformers.AutoTokenizer.from_pretrained(directory)` encodes as this tokenizer does
        (from vocab.json + merges.txt alone it would not give "<mask>" its lstrip).
        `model_max_length`: the model's longest input (512 for roberta-base), what
        `truncation=True` cuts to."""
        self.save(directory)
        self._tok.save(os.path.join(directory, "tokenizer.json"))
        names = dict(zip(("bos_token", "pad_token", "eos_token", "unk_token"), SPECIALS))
        config = {"tokenizer_class": "RobertaTokenizer", **names, "cls_token": SPECIALS[0],
                  "sep_token": SPECIALS[2], "mask_token": MASK, "add_prefix_space": False,
                  "trim_offsets": True, "errors": "replace",
                  "clean_up_tokenization_spaces": False}
        if model_max_length:
            config["model_max_length"] = int(model_max_length)
        with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
            json.dump(config, f, indent=2)


class SentencePieceTokenizer(_Base):
    """sentencepiece BPE (the paper's 30K character-level alternative, Section 4.4).

    The model holds `<s> <pad> </s> <unk>` as pieces 0..3; `<mask>` is one id past the model's
    pieces so that it is the last id, as in RoBERTa. Special-token strings in text are split out
    here (sentencepiece would spell them out), so both kinds treat "<mask>" the same way.
    """

    kind = "sentencepiece"
    _SPECIAL_RE = re.compile(r" ?<mask>|<s>|</s>|<pad>|<unk>")

    def __init__(self, model_proto: bytes, source: str = "<bytes>"):
        import sentencepiece as spm

        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self._proto = model_proto
        got = [self._sp.id_to_piece(i) for i in range(min(4, self._sp.get_piece_size()))]
        if got != list(SPECIALS):
            raise ValueError(f"{source}: pieces 0..3 are {got}, robertax needs {list(SPECIALS)} "
                             "(train it with robertax.tokenizer_training.train_sentencepiece)")
        self.mask_id = self._sp.get_piece_size()
        self.vocab_size = self.mask_id + 1
        self.fingerprint = hashlib.sha256(self.kind.encode() + model_proto).hexdigest()
        self._by_string = {t: i for i, t in enumerate(SPECIALS)} | {MASK: self.mask_id}
        # Does the model prepend "\u2581" to every text it encodes (add_dummy_prefix)?
        self._dummy_prefix = self._sp.normalize("x").startswith("\u2581")
        self._sp_continued = None if self._dummy_prefix else self._sp

    def continuation(self, text: str) -> str:
        """What to encode for a sentence after the first of its line (see `_Base.continuation`).

        sentencepiece prepends a dummy-prefix "\u2581" (a space) to every text it encodes, so a
        line's first sentence and a sentence on its own both start with a word start. For a
        later sentence that prefix stands for the space separating it from the previous one:
        one leading " " is dropped before encoding, and "Hello. The cat" is encoded as "Hello."
        + "The cat" -> [\u2581Hello, .] + [\u2581The, \u2581cat], the paragraph's own pieces
        (with a single space, and with several: "  The" -> " The" -> [\u2581, \u2581The]). Other
        separating whitespace (a tab, "\u3000", none after a CJK full stop) is kept after the
        dummy prefix: no text is lost, but the ids then hold one space more than the paragraph's.
        A model without the dummy prefix gets the text as it is.
        """
        return text[1:] if self._dummy_prefix and text.startswith(" ") else text

    def _continued(self):
        """The processor for text that follows a special token inside one text ("a <mask> b"):
        the text goes on there, so it is encoded as a `continuation`, without the dummy prefix.
        A space before the word is the text's own and gives "\u2581b", exactly the pieces
        `continuation(" b")` gives; no space ("<mask>b") gives no word start, and a lone space
        between two special tokens stays a "\u2581" (the text keeps all its characters)."""
        if self._sp_continued is None:
            import sentencepiece as spm
            from sentencepiece import sentencepiece_model_pb2
            proto = sentencepiece_model_pb2.ModelProto()
            proto.ParseFromString(self._proto)
            proto.normalizer_spec.add_dummy_prefix = False
            self._sp_continued = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        return self._sp_continued

    def _segments(self, text: str, literal: bool):
        """(start, end, special_id or None) runs of `text`."""
        if literal or "<" not in text:
            return [(0, len(text), None)]
        out, pos = [], 0
        for m in self._SPECIAL_RE.finditer(text):
            if m.start() > pos:
                out.append((pos, m.start(), None))
            out.append((m.start(), m.end(), self._by_string[m.group().lstrip(" ")]))
            pos = m.end()
        if pos < len(text):
            out.append((pos, len(text), None))
        return out

    def encode_batch_plain(self, texts: Sequence[str], *, literal: bool = False) -> list[list[int]]:
        texts = list(texts)
        if literal or not any("<" in t for t in texts):
            return self._sp.encode(texts)
        return [self.encode_with_offsets(t, literal=literal)[0] for t in texts]

    def encode_with_offsets(self, text: str, *, literal: bool = False):
        ids, offsets = [], []
        for start, end, special in self._segments(text, literal):
            if special is not None:
                ids.append(special)
                offsets.append((start + (text[start] == " "), end))
                continue
            piece = text[start:end]
            sp = self._continued() if ids else self._sp  # after a special token: continued
            proto = sp.encode(piece, return_type="proto")
            # sentencepiece reports byte offsets into the utf-8 input; map them to characters.
            # A byte-fallback piece covers the whole character its bytes belong to, as in byte BPE.
            char_of_byte = [c for c, ch in enumerate(piece) for _ in range(len(ch.encode("utf-8")))]
            char_of_byte.append(len(piece))
            for p in proto.pieces:
                ids.append(p.id)
                a = char_of_byte[p.begin]
                # spm gives a character to its last byte piece; the earlier ones get it too.
                b = char_of_byte[p.end - 1] + 1 if p.end > p.begin else a + self._sp.is_byte(p.id)
                while a < b and piece[a].isspace():  # trim the space before a word, as byte BPE does
                    a += 1
                offsets.append((start + a, start + b))
        return ids, offsets

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        # Text after <mask>/<pad>/<unk> was encoded continued (no dummy prefix); after <s> and
        # </s> a text (or a pair's second text) starts, as `encode` frames them.
        out, run, continued = [], [], False

        def flush():
            if run:
                out.append((self._continued() if continued else self._sp).decode(run))
                run.clear()

        for i in (int(i) for i in ids):
            if i in self.special_ids:
                flush()
                continued = i not in (self.bos_id, self.eos_id)
                if not skip_special_tokens:
                    out.append(MASK if i == self.mask_id else SPECIALS[i])
            else:
                run.append(i)
        flush()
        return "".join(out)

    def id_to_token(self, i: int) -> str | None:
        return MASK if i == self.mask_id else self._sp.id_to_piece(int(i))

    def word_start_table(self) -> np.ndarray:
        """[vocab_size] bool: True for pieces that begin with "\u2581" (a space) or are special.
        With the dummy prefix every sentence's first piece is a word start."""
        table = np.array([self._sp.id_to_piece(i).startswith("\u2581") for i in range(self.mask_id)]
                         + [True])
        table[list(self.special_ids)] = True
        return table

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, SPM_FILE), "wb") as f:
            f.write(self._proto)
        _write_config(directory, self._config())


Tokenizer = ByteBPETokenizer | SentencePieceTokenizer


def _write_config(directory: str, config: dict) -> None:
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=1)


def _read_merges(path: str) -> list[tuple[str, str]]:
    merges = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if (n == 1 and line.startswith("#version")) or not line:
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise ValueError(f"{path}:{n}: a merge is two tokens separated by one space, got {line!r}")
            merges.append((parts[0], parts[1]))
    return merges


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def load_hf(directory: str, *, mask_lstrip: bool = True) -> ByteBPETokenizer:
    """A Hugging Face RoBERTa directory: vocab.json (RoBERTa ids) + merges.txt."""
    vocab = _read_json(os.path.join(directory, "vocab.json"))
    if vocab.get("<s>") != 0:
        raise ValueError(f"{directory}/vocab.json does not put <s> at 0: GPT-2's vocab.json? "
                         "Use encoder.json + vocab.bpe + dict.txt (fairseq's layout) for GPT-2 files")
    return ByteBPETokenizer(vocab, _read_merges(os.path.join(directory, "merges.txt")),
                            mask_lstrip=mask_lstrip,
                            source=f"{os.path.join(directory, 'vocab.json')} + merges.txt")


def _mask_lstrip(added_tokens) -> bool:
    """Whether tokenizer.json's `<mask>` (among its added tokens) strips the space before it;
    True, roberta-base's rule, where it does not say."""
    return next((bool(a.get("lstrip")) for a in added_tokens or [] if a.get("content") == MASK),
                True)


def _json_mask_lstrip(directory: str) -> bool:
    """`_mask_lstrip` of `directory`/tokenizer.json (True where there is none)."""
    path = os.path.join(directory, "tokenizer.json")
    return _mask_lstrip(_read_json(path).get("added_tokens")) if os.path.exists(path) else True


def load_tokenizer_json(directory: str) -> ByteBPETokenizer:
    """A Hugging Face `tokenizer.json` (what transformers 5 saves, without vocab.json and
    merges.txt) holding a RoBERTa byte-level BPE: its BPE vocab and merges, its added special
    tokens at RoBERTa's ids, and whether `<mask>` strips the space before it. Anything else a
    tokenizer.json can describe (a normalizer, other pre-tokenizers, extra added tokens) would
    encode differently, so it is refused by name."""
    path = os.path.join(directory, "tokenizer.json")
    spec = _read_json(path)
    model = spec.get("model") or {}
    pre = spec.get("pre_tokenizer") or {}
    problems = []
    if model.get("type") != "BPE":
        problems.append(f"model.type is {model.get('type')!r}, not 'BPE'")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") \
            or model.get("dropout"):
        problems.append("model has a subword prefix/suffix or dropout")
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") \
            or not pre.get("use_regex", True):
        problems.append(f"pre_tokenizer is {pre!r}, not ByteLevel(add_prefix_space=false) "
                        "(GPT-2/RoBERTa's)")
    if spec.get("normalizer") is not None:
        problems.append(f"it has a normalizer {spec['normalizer']!r} (RoBERTa has none)")
    vocab = dict(model.get("vocab") or {})
    for added in spec.get("added_tokens") or []:
        content, i = added.get("content"), added.get("id")
        if content not in (*SPECIALS, MASK):
            problems.append(f"added token {content!r} (id {i}) is not one of RoBERTa's specials")
            continue
        if vocab.setdefault(content, i) != i:
            problems.append(f"added token {content!r} has id {i}, the BPE vocab says "
                            f"{vocab[content]}")
        if added.get("rstrip") or added.get("single_word") or (added.get("lstrip")
                                                                and content != MASK):
            problems.append(f"added token {content!r} strips or matches differently "
                            "(rstrip/single_word/lstrip)")
    if problems:
        raise ValueError(f"{path}: not a RoBERTa byte-level BPE robertax can reproduce: "
                         + "; ".join(problems))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in model.get("merges") or []]
    bad = [m for m in merges if len(m) != 2]
    if bad:
        raise ValueError(f"{path}: model.merges holds {bad[0]!r}, not a pair of tokens")
    return ByteBPETokenizer(vocab, merges, mask_lstrip=_mask_lstrip(spec.get("added_tokens")),
                            source=path)


def load_fairseq(directory: str) -> ByteBPETokenizer:
    """fairseq/GPT-2 files: GPT-2 ids (encoder.json) mapped through dict.txt as fairseq does.

    fairseq's Dictionary numbers `<s> <pad> </s> <unk>` 0..3, then dict.txt's entries in file
    order (each entry is a GPT-2 id written as text), and RoBERTa appends `<mask>` last. Entries
    that are not GPT-2 ids (fairseq's `madeupword0000`..) keep their id but no BPE token produces them.
    """
    encoder = _read_json(os.path.join(directory, "encoder.json"))
    by_gpt2_id = {i: t for t, i in encoder.items()}
    dict_path = os.path.join(directory, "dict.txt")
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    next_id = len(SPECIALS)
    with open(dict_path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            symbol = line.rsplit(" ", 2)[0] if " #fairseq:" in line else line.rsplit(" ", 1)[0]
            if symbol.isdigit():
                if int(symbol) not in by_gpt2_id:
                    raise ValueError(f"{dict_path}:{n}: GPT-2 id {symbol} is not in encoder.json")
                token = by_gpt2_id[int(symbol)]
                if token in vocab:
                    raise ValueError(f"{dict_path}:{n}: GPT-2 id {symbol} appears twice")
                vocab[token] = next_id
            next_id += 1
    missing = len(by_gpt2_id) - (len(vocab) - len(SPECIALS))
    if missing:
        raise ValueError(f"{dict_path} lacks {missing} of encoder.json's {len(by_gpt2_id)} GPT-2 tokens")
    vocab[MASK] = next_id
    return ByteBPETokenizer(vocab, _read_merges(os.path.join(directory, "vocab.bpe")),
                            source=f"{os.path.join(directory, 'encoder.json')} + dict.txt + "
                                   "vocab.bpe")


def load_sentencepiece(path: str) -> SentencePieceTokenizer:
    with open(path, "rb") as f:
        return SentencePieceTokenizer(f.read(), source=path)


def load(path: str) -> ByteBPETokenizer | SentencePieceTokenizer:
    """Loads any tokenizer robertax knows, telling the kind from the files in `path`."""
    path = os.fspath(path)
    if os.path.isfile(path):
        if path.endswith(".model"):
            return load_sentencepiece(path)
        path = os.path.dirname(path) or "."
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer path {path} does not exist")
    has = lambda *names: all(os.path.exists(os.path.join(path, n)) for n in names)  # noqa: E731
    if has(CONFIG_FILE):
        config = _read_json(os.path.join(path, CONFIG_FILE))
        kind = config.get("kind")
        tok = (load_hf(path, mask_lstrip=config.get("mask_lstrip", True)) if kind == "byte_bpe" else
               load_sentencepiece(os.path.join(path, SPM_FILE)) if kind == "sentencepiece" else None)
        if tok is None:
            raise ValueError(f"{path}/{CONFIG_FILE}: unknown kind {kind!r} (byte_bpe or sentencepiece)")
        if config.get("fingerprint") not in (None, tok.fingerprint):
            raise ValueError(f"{path}: files changed since saving (fingerprint {tok.fingerprint[:12]} "
                             f"!= {config['fingerprint'][:12]} in {CONFIG_FILE})")
        return tok
    if has("vocab.json", "merges.txt"):  # with a tokenizer.json beside: its <mask> rule, as
        return load_hf(path, mask_lstrip=_json_mask_lstrip(path))  # transformers reads that
    if has("tokenizer.json"):  # transformers 5 saves only this (and tokenizer_config.json)
        return load_tokenizer_json(path)
    if has("encoder.json", "vocab.bpe", "dict.txt"):
        return load_fairseq(path)
    models = sorted(glob.glob(os.path.join(path, "*.model")))
    if len(models) == 1:
        return load_sentencepiece(models[0])
    raise ValueError(f"{path}: no tokenizer found. Expected {CONFIG_FILE}, or vocab.json + merges.txt "
                     f"or tokenizer.json (Hugging Face), or encoder.json + vocab.bpe + dict.txt "
                     f"(fairseq), or one *.model (sentencepiece); found {sorted(os.listdir(path))[:10]}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m robertax.tokenizer", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="learn a vocabulary from a corpus")
    train.add_argument("--kind", choices=["byte_bpe", "sentencepiece"], default="byte_bpe")
    train.add_argument("--input", required=True, help="comma-separated globs of corpus files, "
                       "or with --format=tfds a prepared TFDS dataset's name")
    train.add_argument("--format", choices=["text", "jsonl", "tfds"], default="text")
    train.add_argument("--tfds_split", default="train", help="tfds: the split to read")
    train.add_argument("--tfds_data_dir", default=None,
                       help="tfds: where it is prepared (default TFDS_DATA_DIR)")
    train.add_argument("--text_key", default="text", help="jsonl/tfds: the field with the text")
    train.add_argument("--vocab_size", type=int, default=None, help="default 50265 (byte_bpe) / 30000")
    train.add_argument("--min_frequency", type=int, default=2, help="byte_bpe: rarest pair merged")
    train.add_argument("--byte_fallback", action="store_true", help="sentencepiece: bytes, not <unk>")
    train.add_argument("--output", required=True, help="directory to save the tokenizer in")
    enc = sub.add_parser("encode", help="print the ids of a text")
    enc.add_argument("--tokenizer", required=True)
    enc.add_argument("text")
    enc.add_argument("--pair", default=None)
    args = parser.parse_args(argv)
    with cli.bad_input_exits():  # bad input: the message says what and where
        _run(args)


def _run(args) -> None:
    if args.command == "encode":
        print(load(args.tokenizer).encode(args.text, pair=args.pair))
        return
    from robertax.tokenizer_training import train_byte_bpe, train_sentencepiece
    inputs = [p for p in args.input.split(",") if p]
    read = dict(fmt=args.format, text_key=args.text_key, tfds_split=args.tfds_split,
                tfds_data_dir=args.tfds_data_dir)
    if args.kind == "byte_bpe":
        tok = train_byte_bpe(inputs, args.vocab_size or 50265, args.output,
                             min_frequency=args.min_frequency, **read)
    else:
        tok = train_sentencepiece(inputs, args.vocab_size or 30000, args.output,
                                  byte_fallback=args.byte_fallback, **read)
    print(f"saved {tok!r} to {args.output}")


if __name__ == "__main__":
    main(sys.argv[1:])
