"""The built-in corpus: English prose every Python install has, so training runs with no files.

It is the docstrings of the standard library (one document per module, code examples dropped)
and the language reference topics that `help()` shows (`pydoc_data.topics`): about 2 MB, 0.4M
words. `ensure_builtin(cache_dir)` writes it in fairseq's text layout, trains a byte-level BPE on
it and preprocesses it into shards, once; later calls return at once. The text depends only on
the Python version, read in sorted order, so the same interpreter always builds the same corpus,
tokenizer and shards.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import re
import shutil
import sys
import sysconfig
import time

BUILTIN_VERSION = 1  # bump when the corpus recipe changes: caches are then rebuilt (so does a
# new robertax.preprocess.PREPROCESS_VERSION, which the cache key holds too)
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
_MIN_WORDS = 4  # shorter paragraphs are mostly headings ("Args:") or fragments
_PUNCT_ONLY = re.compile(r"^[\W_]+$")  # reST underlines, table rules


def _paragraphs(text: str) -> list[str]:
    """Prose paragraphs of a docstring/topic: code, doctests and markup lines dropped, lines joined."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        if any(l.lstrip().startswith((">>>", "...")) for l in lines) or lines[0][:1].isspace():
            continue  # code: a doctest or an indented block
        words = " ".join(l.strip() for l in lines if not _PUNCT_ONLY.match(l.strip())).split()
        if len(words) >= _MIN_WORDS:
            out.append(" ".join(words))
    return out


def stdlib_documents() -> list[list[str]]:
    """One document per standard-library module: the paragraphs of its docstrings, in source order."""
    root = sysconfig.get_paths()["stdlib"]
    docs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(f for f in filenames if f.endswith(".py")):
            try:
                with open(os.path.join(dirpath, name), "rb") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, ValueError, UnicodeDecodeError):
                continue  # a few stdlib files are test data in other dialects
            doc = []
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    text = ast.get_docstring(node, clean=True)
                    if text and len(text.split()) >= 8:
                        doc += _paragraphs(text)
            if doc:
                docs.append(doc)
    return docs


def pydoc_documents() -> list[list[str]]:
    """One document per topic of the language reference bundled for `help()`."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions package it apart
        logging.warning("pydoc_data is not installed: the built-in corpus is stdlib docstrings only")
        return []
    return [p for p in (_paragraphs(topics[k]) for k in sorted(topics)) if p]


def write_corpus(path: str) -> dict:
    """Writes the built-in corpus in fairseq's layout; returns its counts."""
    docs = pydoc_documents() + stdlib_documents()
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n\n".join("\n".join(doc) for doc in docs) + "\n")
    os.replace(tmp, path)
    return {"documents": len(docs), "lines": sum(map(len, docs))}


def _key(vocab_size: int) -> dict:
    from robertax import preprocess as preprocess_lib  # the sentence/encoding rule: see there

    return {"version": BUILTIN_VERSION, "python": sys.version.split()[0], "vocab_size": vocab_size,
            "preprocess": preprocess_lib.PREPROCESS_VERSION}


@contextlib.contextmanager
def _lock(path: str):
    """An exclusive lock between processes building the same cache (POSIX; no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_builtin(cache_dir: str, vocab_size: int = 8192) -> str:
    """Returns a preprocessed shard directory of the built-in corpus, building it on first use.

    `cache_dir/builtin-bpe{vocab_size}/` holds corpus.txt, tokenizer/ (a byte-level BPE of
    `vocab_size` trained on the corpus), the shards and manifest.json (train and valid splits).
    """
    from robertax import preprocess as preprocess_lib
    from robertax import tokenizer_training
    from robertax.data import shards

    out_dir = os.path.join(cache_dir, f"builtin-bpe{vocab_size}")

    def done() -> bool:
        try:
            return shards.read_manifest(out_dir).get("builtin") == _key(vocab_size)
        except (FileNotFoundError, ValueError):
            return False

    if done():
        return out_dir
    os.makedirs(cache_dir, exist_ok=True)
    with _lock(os.path.join(cache_dir, f".builtin-bpe{vocab_size}.lock")):
        if done():  # another process built it while we waited
            return out_dir
        start = time.time()
        os.makedirs(out_dir, exist_ok=True)
        corpus_path = os.path.join(out_dir, "corpus.txt")
        counts = write_corpus(corpus_path)
        tok = tokenizer_training.train_byte_bpe(corpus_path, vocab_size)
        if tok.vocab_size < vocab_size:  # the corpus is too small for the vocabulary asked
            shutil.rmtree(out_dir)
            raise ValueError(
                f"the built-in corpus holds too little text for a BPE of {vocab_size} units "
                f"(config.model.vocab_size): it gave {tok.vocab_size}. Use "
                "--config.model.vocab_size=8192 (the tiny config's), or your own corpus "
                "(config.data.corpus) and tokenizer (config.data.tokenizer)")
        # 2% of ~700 documents: ~14 held-out documents, enough for a stable eval loss at toy scale.
        preprocess_lib.preprocess(corpus_path, tok, out_dir, valid_fraction=0.02, seed=0,
                                  overwrite=True, metadata={"builtin": _key(vocab_size), "corpus": counts})
        logging.info("built-in corpus ready in %s (%.1f s)", out_dir, time.time() - start)
    return out_dir
