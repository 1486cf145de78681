"""A fast rule-based sentence splitter for corpora whose lines are paragraphs.

The input formats of Section 4.2 (SENTENCE-PAIR, FULL-SENTENCES, DOC-SENTENCES) need sentence
boundaries, but Wikipedia-like dumps give one paragraph per line. Why our own ~80 lines and not a
library: pysbd is pure Python and about two orders of magnitude slower than tokenization; NLTK's
Punkt needs model files downloaded at run time (no network here, nor on many clusters);
blingfire is fast but a native wheel that is not built for every platform robertax runs on. The
rules below are the usual ones (terminal punctuation, closing quotes, an upper-case or caseless
next word, known abbreviations and initials), run as one compiled regex pass per paragraph, so
splitting costs a small fraction of BPE encoding. Errors only move a boundary: every character of
the paragraph lands in exactly one sentence.

Whitespace: `split_sentences(p, keep_whitespace=True)` gives every sentence after the first the
whitespace that separates it from the previous one, so `"".join(sentences) == p.strip()` and the
sentences encode, one by one, to the tokens of the whole paragraph (robertax.preprocess relies on
it: with byte-level BPE a word's leading space is part of its token, "ĠThe" vs "The"). Boundaries
are only placed where GPT-2's pre-tokenizer splits the paragraph anyway: between terminal
punctuation (with its closing quotes/brackets) and the whitespace after it, or, for the CJK
terminators, before whitespace, a letter or a digit. The default (`keep_whitespace=False`) strips
each sentence, for display.
"""

from __future__ import annotations

import re
import unicodedata

# Lower-cased, without the final period. A period after one of these is not a sentence end.
ABBREVIATIONS = frozenset("""
mr mrs ms mx dr prof sr jr st mt ft sgt capt col gen lt cmdr adm gov sen rep rev hon pres supt
messrs mme mlle fr br sra srta vs etc al cf viz approx ca esp fig figs eq eqs no nos vol vols
ch chap sec secs pp pg ed eds trans repr op dept univ assn bros inc ltd co corp plc llc est
jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu thur thurs fri sat sun
ave blvd rd hwy mts ph.d b.a m.a u.s u.k e.g i.e a.m p.m
""".split())

# Whitespace as GPT-2's pre-tokenizer (Unicode White_Space) sees it: Python's \s also matches the
# separators \x1c-\x1f, which the pre-tokenizer joins to the punctuation before them.
_WS = r"[^\S\x1c-\x1f]"
# A sentence end: terminal punctuation, closing quotes/brackets, then whitespace. Also the
# full-width CJK terminators, which are not followed by spaces.
_END = re.compile(rf"""([.!?\u2026]+['"\u2019\u201d\u00bb)\]]*)({_WS}+)|([\u3002\uff01\uff1f]+['"\u300d\u300f\uff09\u201d]*)""")
_IS_WS = re.compile(_WS)
_OPENERS = "\"'(\u201c\u2018[\u00ab\u00bf\u00a1"


def _starts_sentence(text: str, i: int) -> bool:
    """True if the word at text[i] may start a sentence: an upper-case, digit or caseless start."""
    n = len(text)
    while i < n and text[i] in _OPENERS:
        i += 1
    if i >= n:
        return False
    c = text[i]
    return c.isupper() or c.isdigit() or (c.isalpha() and not c.islower())


def _is_abbreviation(text: str, end: int) -> bool:
    """True if the period at text[end] closes an abbreviation or an initial ("J." / "U.S.")."""
    start = text.rfind(" ", 0, end) + 1
    word = text[start:end].lstrip(_OPENERS)
    if not word:
        return False
    if len(word) == 1 and word.isalpha():  # an initial: "J. R. R. Tolkien"
        return True
    if "." in word and all(len(part) <= 2 for part in word.split(".")):  # "U.S", "e.g"
        return True
    return word.lower() in ABBREVIATIONS


def _cjk_cut_ok(text: str, i: int) -> bool:
    """True if a CJK sentence may start at text[i]: the end, whitespace, a letter or a digit. Before
    other punctuation ("。「…") GPT-2's pre-tokenizer keeps both marks in one token, so a cut there
    would change the paragraph's tokens: the sentence goes on instead."""
    if i >= len(text):
        return True
    return _IS_WS.match(text, i) is not None or unicodedata.category(text[i])[0] in "LN"


def split_sentences(paragraph: str, *, keep_whitespace: bool = False) -> list[str]:
    """Splits one paragraph into sentences (non-empty, in order).

    keep_whitespace=False: each sentence is stripped. True: each sentence but the first starts with
    the whitespace between it and the previous one, so the sentences concatenate to
    `paragraph.strip()` (see the module docstring).
    """
    cuts = []  # where each sentence but the last ends (the whitespace after it goes to the next)
    for m in _END.finditer(paragraph):
        if m.group(3) is not None:  # CJK terminator: the boundary is right after it
            if not _cjk_cut_ok(paragraph, m.end()):
                continue
            cut = m.end()
        else:
            punct, cut = m.group(1), m.end(1)
            if not _starts_sentence(paragraph, m.end()):
                continue
            if punct.startswith(".") and len(punct.rstrip("'\"\u2019\u201d\u00bb)]")) == 1 \
                    and _is_abbreviation(paragraph, m.start(1)):
                continue
        cuts.append(cut)
    out, start = [], 0
    for end in [*cuts, len(paragraph)]:
        piece = paragraph[start:end]  # every piece but the last holds its terminator
        start = end
        if not out:
            piece = piece.lstrip()
        if end == len(paragraph):
            piece = piece.rstrip()
        if piece.strip():
            out.append(piece if keep_whitespace else piece.strip())
    return out
