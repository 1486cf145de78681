"""Corpus -> tokenized ArrayRecord shards (the format of robertax.data.shards), once, in parallel.

    python -m robertax.preprocess --input='wiki/*.txt.gz,books/*.txt' --tokenizer=PATH --output=DIR \
        [--format=text|jsonl|tfds] [--valid_fraction=0.01] [--seed=0] [--num_processes=8]

Documents keep their sentence boundaries (one record per sentence; paragraphs are split into
sentences unless --nosplit_sentences). Splitting does not change the token stream: a line's
first sentence is encoded as fairseq encodes a line (no leading space), and each later sentence
keeps the whitespace that separated it from the previous one (`tokenizer.continuation`), so with
byte-level BPE a line's sentence records concatenate to exactly the ids of the whole line
("... Kouros). The statue" keeps "ĠThe"; sentencepiece: see SentencePieceTokenizer.continuation).
A later line (paragraph) of a document continues after one space, so its first word is a word
start ("ĠThe") and the document reads as running text.

Each document goes to `valid` when a seeded hash of its position in the input falls under
`valid_fraction`, so the split does not depend on the number of processes or how the input is
cut; the corpus's first document always goes to `valid` (when valid_fraction > 0) so a small
corpus still gets one. Text is encoded literally: "<s>" in a web page stays characters, as in
fairseq's preprocessing.

The output directory gets `manifest.json` (counts, skips by reason with example locations, the
sources, the tokenizer's fingerprint), the shards, `{split}.index.npz`, and a copy of the
tokenizer in `tokenizer/`. Counts add up: see `check_counts`. Re-running with the same inputs and
settings on a finished directory does nothing; an interrupted run resumes from finished units.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from array import array
from typing import Sequence

import numpy as np

import robertax
from robertax import cli
from robertax import tokenizer as tokenizer_lib
from robertax.data import corpus, shards
from robertax.data.sentences import split_sentences as _split

SPLITS = ("train", "valid")
# The text-to-records rule; part of the config hash (and of the built-in corpus's cache key), so
# a changed rule re-preprocesses instead of reusing. 2: later sentences keep their leading space.
PREPROCESS_VERSION = 3
WORK = "_work"  # per-unit outputs of an unfinished run
_BATCH_SENTENCES = 4096  # sentences per encode_batch call: big enough to amortize, small in memory
_state: dict = {}  # per-process: units, tokenizer, options (set by _init)


def _init(units, tokenizer, options, threads):
    if threads:  # one Rust thread pool per process: avoid processes x cores threads
        os.environ["RAYON_NUM_THREADS"] = str(threads)
    tok = tokenizer_lib.load(tokenizer) if isinstance(tokenizer, str) else tokenizer
    _state.update(units=units, tok=tok, options=options)


def _is_valid(key: tuple, seed: int, fraction: float) -> bool:
    digest = hashlib.blake2b(f"{seed}:{key[0]}:{key[1]}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") < fraction * 2.0**64


class _UnitWriter:
    """The records and index of one unit, per split, written as they come."""

    def __init__(self, prefix: str, dtype):
        self.prefix, self.dtype = prefix, dtype
        self.writers, self.docs = {}, {s: array("q") for s in SPLITS}
        self.lengths = {s: array("i") for s in SPLITS}

    def add(self, split: str, sentences: list) -> None:
        if split not in self.writers:
            self.writers[split] = shards.open_shard_writer(f"{self.prefix}-{split}.array_record")
        write, dtype = self.writers[split].write, self.dtype
        for ids in sentences:
            write(np.array(ids, dtype=dtype).tobytes())
        self.docs[split].append(len(sentences))
        self.lengths[split].extend(map(len, sentences))

    def close(self) -> dict:
        for w in self.writers.values():
            w.close()
        np.savez(f"{self.prefix}.npz", **{f"{s}_{k}": np.frombuffer(v[s], dtype=v[s].typecode)
                                           for s in SPLITS for k, v in (("docs", self.docs),
                                                                        ("lengths", self.lengths))})
        return {s: {"documents": len(self.docs[s]), "sentences": len(self.lengths[s]),
                    "tokens": int(sum(self.lengths[s])), "max_sentence_tokens": max(self.lengths[s], default=0)}
                for s in SPLITS}


def _process_unit(i: int) -> dict:
    """Reads, splits, tokenizes and writes unit i; returns its counts (also saved beside it)."""
    units, tok, opt = _state["units"], _state["tok"], _state["options"]
    prefix = os.path.join(opt["work_dir"], f"unit-{i:06d}")
    stats, out = corpus.Stats(), _UnitWriter(prefix, shards.token_dtype(tok.vocab_size))
    force_valid = i == 0 and opt["valid_fraction"] > 0  # see the module docstring
    pending, texts = [], []
    continuation = getattr(tok, "continuation", lambda text: text)  # byte BPE's rule by default

    def flush():
        nonlocal force_valid
        encoded = tok.encode_batch_plain(texts, literal=True)
        pos = 0
        for doc, n in pending:
            sentences = []
            for ids in encoded[pos:pos + n]:
                if ids:
                    sentences.append(ids)
                else:
                    stats.skip("empty_sentence", doc.where)
            pos += n
            if not sentences:
                stats.skip("empty_document", doc.where)
                continue
            valid = force_valid or _is_valid(doc.key, opt["seed"], opt["valid_fraction"])
            force_valid = False
            out.add("valid" if valid else "train", sentences)
        pending.clear()
        texts.clear()

    for doc in corpus.read_unit(units[i], stats):
        if opt["split_sentences"]:
            # A later line of a document continues its text after one space (paragraphs read as
            # running text, so a paragraph's first word is a word start, "ĠThe", as it would be
            # mid-line); later sentences of a line keep their own whitespace.
            sentences = [s if j == k == 0 else continuation(" " + s if k == 0 else s)
                         for j, line in enumerate(doc.lines)
                         for k, s in enumerate(_split(line, keep_whitespace=True))]
        else:
            sentences = [line if j == 0 else continuation(" " + line)
                         for j, line in enumerate(doc.lines)]
        stats.counts["sentences"] += len(sentences)
        pending.append((doc, len(sentences)))
        texts.extend(sentences)
        if len(texts) >= _BATCH_SENTENCES:
            flush()
    flush()
    result = {"splits": out.close(), "stats": stats.to_json()}
    with open(prefix + ".json.tmp", "w") as f:
        json.dump(result, f)
    os.replace(prefix + ".json.tmp", prefix + ".json")  # last: marks the unit finished
    return result


def check_counts(manifest: dict) -> None:
    """Raises unless every input document, line and sentence is either written or skipped."""
    inp, skipped, splits = manifest["input"], manifest["skipped"], manifest["splits"].values()
    docs = sum(s["documents"] for s in splits) + sum(skipped.get(r, 0) for r in corpus.DOCUMENT_SKIPS)
    sentences = sum(s["sentences"] for s in splits) + skipped.get("empty_sentence", 0)
    problems = []
    if docs != inp["documents"]:
        problems.append(f"documents: {inp['documents']} read != {docs} written + skipped")
    if sentences != inp["sentences"]:
        problems.append(f"sentences: {inp['sentences']} split != {sentences} written + skipped")
    if inp["lines_kept"] + sum(skipped.get(r, 0) for r in corpus.LINE_SKIPS) != inp["lines"]:
        problems.append(f"lines: {inp['lines']} read != {inp['lines_kept']} kept + skipped")
    if problems:
        raise AssertionError("preprocessing lost input: " + "; ".join(problems))


def _config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _clean(out_dir: str, keep_work: bool) -> None:
    """Removes what an earlier run of ours left (only our file names)."""
    for name in os.listdir(out_dir):
        if (name.endswith(".array_record") and name.split("-")[0] in SPLITS) or name.endswith(".index.npz") \
                or name in (shards.MANIFEST, shards.MANIFEST + ".tmp"):
            os.remove(os.path.join(out_dir, name))
    if not keep_work and os.path.isdir(os.path.join(out_dir, WORK)):
        shutil.rmtree(os.path.join(out_dir, WORK))


def preprocess(sources, tokenizer, out_dir: str, *, valid_fraction: float = 0.01, seed: int = 0,
               num_processes: int = 1, fmt: str = "text", text_key: str = "text",
               split_sentences: bool = True, max_line_bytes: int = 100_000, chunk_bytes: int = 32 << 20,
               tfds_split: str = "train", tfds_data_dir: str | None = None, overwrite: bool = False,
               metadata: dict | None = None) -> dict:
    """Tokenizes `sources` into shards in `out_dir`; returns the manifest.

    sources: comma-separated globs, a list of globs/paths, or `corpus.Source` objects (or a TFDS
    name with fmt="tfds"). tokenizer: a path `robertax.tokenizer.load` reads, or a tokenizer.
    metadata: extra JSON-able entries for the manifest (not part of what makes a re-run a no-op).
    """
    if not 0 <= valid_fraction < 1:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    if isinstance(sources, corpus.Source):
        sources = [sources]
    elif not (isinstance(sources, (list, tuple)) and all(isinstance(s, corpus.Source) for s in sources)):
        sources = [corpus.make_source(sources, fmt, text_key=text_key, max_line_bytes=max_line_bytes,
                                      tfds_split=tfds_split, tfds_data_dir=tfds_data_dir)]
    tok = tokenizer if hasattr(tokenizer, "encode_batch_plain") else tokenizer_lib.load(tokenizer)
    options = {"valid_fraction": valid_fraction, "seed": seed, "split_sentences": split_sentences,
               "max_line_bytes": max_line_bytes, "chunk_bytes": chunk_bytes}
    described = [d for s in sources for d in s.describe()]
    config = {"format_version": shards.FORMAT_VERSION, "preprocess_version": PREPROCESS_VERSION,
              "sources": described, "tokenizer": tok.fingerprint,
              "options": options, "formats": [s.fmt for s in sources], "text_keys": [s.text_key for s in sources]}
    config_hash = _config_hash(config)

    os.makedirs(out_dir, exist_ok=True)
    manifest_path = os.path.join(out_dir, shards.MANIFEST)
    if os.path.exists(manifest_path):
        old = shards.read_manifest(out_dir)
        if old.get("config_hash") == config_hash and not overwrite:
            logging.info("%s is already preprocessed from these inputs: nothing to do", out_dir)
            return old
        if not overwrite:
            raise FileExistsError(f"{out_dir} holds a corpus preprocessed from other inputs or settings; "
                                  "use another --output or pass --overwrite")
    work_dir = os.path.join(out_dir, WORK)
    work_config = os.path.join(work_dir, "config.json")
    resume = os.path.exists(work_config) and json.load(open(work_config)).get("hash") == config_hash
    _clean(out_dir, keep_work=resume)
    os.makedirs(work_dir, exist_ok=True)
    with open(work_config, "w") as f:
        json.dump({"hash": config_hash}, f)

    tok_dir = os.path.join(out_dir, "tokenizer")
    if not (os.path.exists(os.path.join(tok_dir, tokenizer_lib.CONFIG_FILE))
            and tokenizer_lib.load(tok_dir).fingerprint == tok.fingerprint):
        tok.save(tok_dir)

    units = _renumber(sources, chunk_bytes)
    todo = [i for i in range(len(units)) if not os.path.exists(os.path.join(work_dir, f"unit-{i:06d}.json"))]
    start = time.time()
    opts = {**options, "work_dir": work_dir}
    if num_processes <= 1 or len(todo) <= 1:
        _init(units, tok, opts, 0)
        for i in todo:
            _process_unit(i)
    else:
        procs = min(num_processes, len(todo))
        threads = max(1, (os.cpu_count() or 1) // procs)
        with multiprocessing.get_context("spawn").Pool(procs, _init, (units, tok_dir, opts, threads)) as pool:
            for n, _ in enumerate(pool.imap_unordered(_process_unit, todo), 1):
                logging.info("preprocess: %d/%d units done", n, len(todo))
    manifest = _assemble(out_dir, units, tok, described, options, config_hash, metadata, time.time() - start)
    shutil.rmtree(work_dir)
    return manifest


def _renumber(sources: Sequence[corpus.Source], chunk_bytes: int) -> list:
    """All sources' units; source ids count across sources so document keys stay distinct."""
    units, offset = [], 0
    for s in sources:
        for u in s.units(chunk_bytes):
            units.append(corpus.Unit(**{**u.__dict__, "source_id": u.source_id + offset}))
        offset += len(s.paths)
    return units


def _assemble(out_dir, units, tok, described, options, config_hash, metadata, seconds) -> dict:
    work_dir = os.path.join(out_dir, WORK)
    stats, results = corpus.Stats(), []
    for i in range(len(units)):
        with open(os.path.join(work_dir, f"unit-{i:06d}.json")) as f:
            results.append(json.load(f))
        stats.merge(corpus.Stats.from_json(results[-1]["stats"]))
    stats.resolve()
    splits = {}
    for split in SPLITS:
        have = [i for i, r in enumerate(results) if r["splits"][split]["documents"]]
        names = [shards.shard_name(split, k, len(have)) for k in range(len(have))]
        docs, lengths = [], []
        for i, name in zip(have, names):
            prefix = os.path.join(work_dir, f"unit-{i:06d}")
            os.replace(f"{prefix}-{split}.array_record", os.path.join(out_dir, name))
            with np.load(prefix + ".npz") as z:
                docs.append(z[f"{split}_docs"])
                lengths.append(z[f"{split}_lengths"])
        index = shards.SplitIndex(np.concatenate(docs or [np.zeros(0, np.int64)]),
                                  np.concatenate(lengths or [np.zeros(0, np.int32)]))
        shards.write_index(os.path.join(out_dir, f"{split}.index.npz"), index)
        counts = [r["splits"][split] for r in results]
        splits[split] = {"shards": names, "index": f"{split}.index.npz",
                         "documents": index.num_documents, "sentences": index.num_sentences,
                         "tokens": index.num_tokens,
                         "max_sentence_tokens": max((c["max_sentence_tokens"] for c in counts), default=0)}
    if splits["train"]["documents"] == 0:
        raise ValueError(f"no training documents in {out_dir}: the input had {stats.counts['documents']} "
                         f"documents, skipped {dict(stats.skipped)}; with one document use valid_fraction=0")
    skipped = {r: stats.skipped.get(r, 0) for r in (*corpus.LINE_SKIPS, *corpus.DOCUMENT_SKIPS, "empty_sentence")}
    skipped_lines = sum(skipped[r] for r in corpus.LINE_SKIPS)
    manifest = {
        "format_version": shards.FORMAT_VERSION,
        "preprocess_version": PREPROCESS_VERSION,
        "token_dtype": shards.token_dtype(tok.vocab_size).name,
        "vocab_size": tok.vocab_size,
        "tokenizer": {"fingerprint": tok.fingerprint, "kind": tok.kind, "path": "tokenizer"},
        "special_ids": tok.special_tokens,
        "splits": splits,
        "input": {"documents": stats.counts["documents"], "lines": stats.counts["lines"],
                  "lines_kept": stats.counts["lines"] - skipped_lines, "sentences": stats.counts["sentences"]},
        "skipped": skipped,
        "skipped_examples": {r: v for r, v in stats.examples.items() if v},
        "accounting": {
            "documents": "input.documents = splits.*.documents + skipped.invalid_utf8_document + skipped.empty_document",
            "lines": "input.lines (non-blank) = input.lines_kept + skipped.invalid_utf8_line + skipped.line_too_long",
            "sentences": "input.sentences (from kept lines) = splits.*.sentences + skipped.empty_sentence"},
        "sources": described,
        "options": options,
        "config_hash": config_hash,
        "seconds": round(seconds, 2),
        "robertax_version": robertax.__version__,
        **(metadata or {}),
    }
    check_counts(manifest)
    for reason, n in skipped.items():
        if n:
            logging.warning("preprocess skipped %d × %s, e.g. at %s", n, reason, manifest["skipped_examples"][reason][:3])
    path = os.path.join(out_dir, shards.MANIFEST)
    with open(path + ".tmp", "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(path + ".tmp", path)  # last: a directory with a manifest is complete
    return manifest


def main(argv):
    from absl import flags
    FLAGS = flags.FLAGS
    del argv
    with cli.bad_input_exits():  # bad input: the message says what and where
        manifest = preprocess(
            FLAGS.input, FLAGS.tokenizer, FLAGS.output, valid_fraction=FLAGS.valid_fraction, seed=FLAGS.seed,
            num_processes=FLAGS.num_processes, fmt=FLAGS.format, text_key=FLAGS.text_key,
            split_sentences=FLAGS.split_sentences, max_line_bytes=FLAGS.max_line_bytes,
            chunk_bytes=FLAGS.chunk_mb << 20, tfds_split=FLAGS.tfds_split, tfds_data_dir=FLAGS.tfds_data_dir,
            overwrite=FLAGS.overwrite)
    for split, s in manifest["splits"].items():
        print(f"{split}: {s['documents']:,} documents, {s['sentences']:,} sentences, {s['tokens']:,} tokens, "
              f"{len(s['shards'])} shards")
    print(f"skipped: {manifest['skipped']}\nwrote {FLAGS.output}/{shards.MANIFEST}")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("input", None, "comma-separated globs of corpus files (or a TFDS name)", required=True)
    flags.DEFINE_string("tokenizer", None, "tokenizer directory/file (robertax.tokenizer.load)", required=True)
    flags.DEFINE_string("output", None, "directory for the shards and manifest", required=True)
    flags.DEFINE_enum("format", "text", list(corpus.FORMATS), "input format")
    flags.DEFINE_string("text_key", "text", "jsonl/tfds: the field holding the text")
    flags.DEFINE_float("valid_fraction", 0.01, "fraction of documents held out for validation")
    flags.DEFINE_integer("seed", 0, "seed of the train/valid split")
    flags.DEFINE_integer("num_processes", os.cpu_count() or 1, "worker processes")
    flags.DEFINE_bool("split_sentences", True, "split lines (paragraphs) into sentences")
    flags.DEFINE_integer("max_line_bytes", 100_000, "longer lines are skipped and counted")
    flags.DEFINE_integer("chunk_mb", 32, "work unit size: files are cut at document boundaries")
    flags.DEFINE_string("tfds_split", "train", "tfds: split to read")
    flags.DEFINE_string("tfds_data_dir", None, "tfds: data_dir holding the prepared dataset")
    flags.DEFINE_bool("overwrite", False, "replace an output made from other inputs/settings")
    app.run(main)
