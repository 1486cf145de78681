"""Learning a vocabulary: RoBERTa's byte-level BPE (GPT-2's algorithm) or the paper's
sentencepiece BPE alternative, both in RoBERTa's layout (`<s>`=0 `<pad>`=1 `</s>`=2 `<unk>`=3,
`<mask>` last), from corpus files (read as `robertax.data.corpus` reads them; skipped lines
are counted and reported) or any iterable of text lines.

    tok = robertax.tokenizer_training.train_byte_bpe("corpus/*.txt", 50265, out_dir)
    python -m robertax.tokenizer train --kind=byte_bpe --input='corpus/*.txt' --output=DIR
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from typing import Iterable

from robertax import tokenizer


def _training_lines(inputs, read: dict, max_bytes: int | None = None) -> Iterable[str]:
    """A path/glob or a list/tuple of them, or a TFDS name (read with robertax.data.corpus, so
    .gz, JSON lines and prepared TFDS datasets work; `read`: its `make_source` options), or any
    other iterable (a generator, an iterator) of text lines. Skips are logged."""
    from robertax.data import corpus

    stats = corpus.Stats()
    if isinstance(inputs, (str, os.PathLike, list, tuple)):
        patterns = [os.fspath(inputs)] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
        lines = corpus.iter_lines(corpus.make_source(patterns, **read), stats)
    else:
        lines = (t for t in inputs if t.strip())
    for line in lines:
        if max_bytes is not None and len(line.encode("utf-8")) > max_bytes:
            stats.skip("line_too_long", line[:40] + "...")  # sentencepiece would drop it unsaid
            continue
        yield line
    if any(stats.skipped.values()):
        stats.resolve()
        logging.warning("tokenizer training skipped %s, e.g. at %s", dict(stats.skipped), stats.examples)


def train_byte_bpe(files_or_iterator, vocab_size: int, out_dir: str | None = None, *,
                   min_frequency: int = 2, fmt: str = "text", text_key: str = "text",
                   tfds_split: str = "train", tfds_data_dir: str | None = None
                   ) -> tokenizer.ByteBPETokenizer:
    """Learns a byte-level BPE (GPT-2's algorithm) with RoBERTa's layout: specials 0..3, `<mask>` last.

    `fmt` ("text", "jsonl", "tfds"), `text_key`, `tfds_split`, `tfds_data_dir`: how to read
    `files_or_iterator`, as `robertax.preprocess` does.

    `vocab_size` counts every id; with too little text for `min_frequency` the vocabulary stops
    short, and `<mask>` then follows the last merge.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(tokenizer.SPECIALS) + 1:
        raise ValueError(f"vocab_size {vocab_size} is below the 256 bytes + 5 specials")
    tok = Tokenizer(models.BPE(fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, min_frequency=min_frequency,
                                  special_tokens=list(tokenizer.SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = _training_lines(files_or_iterator, dict(fmt=fmt, text_key=text_key,
                                                    tfds_split=tfds_split,
                                                    tfds_data_dir=tfds_data_dir))
    tok.train_from_iterator(lines, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = dict(model["vocab"])
    vocab[tokenizer.MASK] = max(vocab.values()) + 1
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    result = tokenizer.ByteBPETokenizer(vocab, merges)
    if result.vocab_size < vocab_size:
        logging.warning("byte-level BPE: asked for vocab_size %d, the text gave only %d (no pair "
                        "left that occurs min_frequency=%d times): train on more text, or lower "
                        "min_frequency", vocab_size, result.vocab_size, min_frequency)
    if out_dir:
        result.save(out_dir)
    return result


def train_sentencepiece(files_or_iterator, vocab_size: int = 30000, out_dir: str | None = None, *,
                        byte_fallback: bool = False, character_coverage: float = 0.9995,
                        max_sentence_length: int = 1 << 16, input_sentence_size: int = 10_000_000,
                        fmt: str = "text", text_key: str = "text", tfds_split: str = "train",
                        tfds_data_dir: str | None = None) -> tokenizer.SentencePieceTokenizer:
    """Learns a sentencepiece BPE with RoBERTa's layout (`<mask>` is added as the last id).

    Defaults follow the paper's alternative: a character-level BPE, so characters outside the
    coverage become `<unk>` (byte_fallback=False); turn `byte_fallback` on to avoid unknowns.
    Normalization is the identity so text and offsets are not rewritten.
    """
    import sentencepiece as spm

    model = io.BytesIO()
    spm.set_random_generator_seed(0)  # sentence sampling is the only randomness: fix it
    try:
        _train_spm(spm, model, files_or_iterator, vocab_size, byte_fallback, character_coverage,
                   max_sentence_length, input_sentence_size,
                   dict(fmt=fmt, text_key=text_key, tfds_split=tfds_split,
                        tfds_data_dir=tfds_data_dir))
    except RuntimeError as e:  # sentencepiece's checks; say them in this function's terms
        # sentencepiece learns vocab_size - 1 pieces (<mask> is added), so its numbers are ours - 1
        high = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)",
                         str(e))
        if high:
            raise ValueError(f"vocab_size {vocab_size} is too large for this text: sentencepiece "
                             f"can learn at most {int(high[2])} pieces from it, so the largest "
                             f"vocab_size that works is {int(high[2]) + 1} (the pieces + <mask>)"
                             ) from None
        raise ValueError(f"sentencepiece training failed (vocab_size {vocab_size}, i.e. "
                         f"{vocab_size - 1} pieces + <mask>): {e}") from None
    result = tokenizer.SentencePieceTokenizer(model.getvalue())
    if out_dir:
        result.save(out_dir)
    return result


def _train_spm(spm, model, files_or_iterator, vocab_size, byte_fallback, character_coverage,
               max_sentence_length, input_sentence_size, read: dict) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=_training_lines(files_or_iterator, read, max_sentence_length),
        model_writer=model,
        model_type="bpe", vocab_size=vocab_size - 1, character_coverage=character_coverage,
        byte_fallback=byte_fallback, normalization_rule_name="identity", remove_extra_whitespaces=False,
        bos_id=0, pad_id=1, eos_id=2, unk_id=3, bos_piece=tokenizer.SPECIALS[0], pad_piece=tokenizer.SPECIALS[1],
        eos_piece=tokenizer.SPECIALS[2], unk_piece=tokenizer.SPECIALS[3], max_sentence_length=max_sentence_length,
        input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
        num_threads=os.cpu_count() or 1, minloglevel=2)
