"""The Grain input pipeline: preprocessed shards -> formatted, masked, batched training inputs.

    ds = make_dataset(config.data, resolve_shard_dir(config), "train",
                      batch_size=config.batch_size, seed=config.data.seed)
    it = make_iterator(...same arguments...)     # checkpointable; Grain workers if num_workers > 0

Random access throughout (a `grain.MapDataset`):
    range(records) -> global shuffle, redrawn each epoch -> repeat(epochs) -> (record, epoch)
    -> this host's slice [process_index::process_count] -> build row + mask -> batch
A record is a row of the format's table (formats.py); with static masking the table is repeated
`dupe_factor` times and each copy is its own record. Everything random about a record (pair
splits, NSP negatives, the mask) comes from one generator seeded by (seed, record, epoch) — epoch
fixed to 0 for static masking — not from the record's position in the stream, so it does not
depend on the shuffle, the number of hosts or workers, or where a run was resumed. (This is why
masking is a `map` that seeds its own generator rather than Grain's `random_map`, whose seed
follows the element's position in the pipeline.)

Rows are read as runs of sentence records straight from the ArrayRecord shards (SentenceReader),
~3,000-5,000 masked 512-token rows/s per worker process on a 2-core host (tools/bench_pipeline.py):
well under one core per GPU for RoBERTa-base's ~1,600 rows/s.

Host h of n reads elements h, h + n, ... of the global stream and batches batch_size // n of
them, so the n host batches of step t together are exactly the global batch of step t.

Each batch is a dict of numpy arrays (B = per-host batch, L = max_length, P = max_predictions,
K = NSP inputs per row):
    input_ids     [B, L] int32   after corruption; pad_id on padding
    original_ids  [B, L] int32   before corruption
    segment_ids   [B, L] int32   0 on padding, 1..k numbering the inputs packed into the row;
                                 attention must stay within equal nonzero ids
    position_ids  [B, L] int32   pad_id + 1 + offset within each input; pad_id on padding
    mlm_positions [B, P] int32   chosen positions, ascending, then 0
    mlm_targets   [B, P] int32   original ids there, then 0
    mlm_weights   [B, P] float32 1 on real predictions, 0 on the unused capacity
    mlm_overflow  [B]    int32   chosen tokens dropped for lack of capacity (left uncorrupted)
    example_ids   [B]    int64   the record
    epoch         [B]    int32
  and for segment_pair (K = 1) / sentence_pair (K = data.max_inputs_per_row):
    nsp_positions [B, K] int32   the position of each input's <s>
    nsp_labels    [B, K] int32   1 IsNext, 0 random next
    nsp_weights   [B, K] float32 1 for real inputs
"""

from __future__ import annotations

import bisect
import logging
import math
import os

import grain
import numpy as np

import robertax
from robertax.data import formats, masking, shards

MASKING = ("dynamic", "static")


def _text_files(corpus: str) -> list[str]:
    import glob  # pylint: disable=import-outside-toplevel
    return [f for pattern in corpus.split(",") for f in glob.glob(os.path.expanduser(pattern))
            if os.path.isfile(f)]


def _preprocess_text(d, cache_root: str) -> str:
    """Text files named by globs: tokenized once into shards (a no-op when already done)."""
    import hashlib  # pylint: disable=import-outside-toplevel
    from robertax import preprocess, tokenizer  # pylint: disable=import-outside-toplevel
    if d.tokenizer == "builtin":
        raise ValueError("config.data.corpus names text files: set config.data.tokenizer to a "
                         "tokenizer directory (e.g. RoBERTa's vocab.json + merges.txt)")
    tok = tokenizer.load(d.tokenizer)
    key = hashlib.sha256(f"{d.corpus}|{tok.fingerprint}|{d.valid_fraction}|{d.seed}".encode())
    out = d.shard_dir or os.path.join(cache_root, "corpus-" + key.hexdigest()[:16])
    preprocess.preprocess(d.corpus.split(","), tok, out, valid_fraction=d.valid_fraction,
                          seed=d.seed)
    return out


def resolve_shard_dir(config, build: bool = True) -> str | None:
    """The preprocessed shard directory the config's data section names (built if "builtin").
    Text files are tokenized into the cache first; with `build=False` they are not: None."""
    d = config.data
    cache_root = robertax.cache_root()
    if d.corpus == "builtin":
        from robertax.data import builtin  # pylint: disable=import-outside-toplevel
        cache = d.shard_dir or os.path.join(cache_root, "builtin")
        path = builtin.ensure_builtin(cache, vocab_size=config.model.vocab_size)
    elif os.path.isfile(os.path.join(d.corpus, shards.MANIFEST)):
        path = d.corpus
    elif d.shard_dir and os.path.isfile(os.path.join(d.shard_dir, shards.MANIFEST)):
        path = d.shard_dir
    elif _text_files(d.corpus):
        if not build:
            return None
        path = _preprocess_text(d, cache_root)
    else:
        raise FileNotFoundError(
            f"config.data.corpus={d.corpus!r} is neither 'builtin', nor text files (the glob "
            f"matches no file), nor a preprocessed shard directory (no {shards.MANIFEST}), and "
            f"config.data.shard_dir={d.shard_dir!r} holds none either: give text globs, or run "
            "`python -m robertax.preprocess` and point config.data.corpus at its output")
    vocab = shards.read_manifest(path)["vocab_size"]
    if vocab > config.model.vocab_size:
        raise ValueError(f"{path}/{shards.MANIFEST}: vocab_size {vocab} exceeds "
                         f"config.model.vocab_size={config.model.vocab_size}")
    return path


def tokenizer_path(config) -> str:
    """Where the tokenizer of the config's corpus is, preprocessing nothing (only the small
    built-in corpus is built if absent): a shard directory's tokenizer/, or for text globs
    config.data.tokenizer, the one they are (or would be) tokenized with."""
    shard_dir = resolve_shard_dir(config, build=False)
    if shard_dir:
        return os.path.join(shard_dir, "tokenizer")
    d = config.data
    if d.get("tokenizer", "builtin") in ("", "builtin"):
        raise ValueError(f"config.data.corpus={d.corpus!r} is text, and "
                         "config.data.tokenizer names no tokenizer")
    return d.tokenizer


def _choice(data_config, key, allowed):
    value = data_config[key]
    if value not in allowed:
        raise ValueError(f"config.data.{key}={value!r} is not one of {', '.join(allowed)}")
    return value


def _config_fingerprint(data_config) -> str | None:
    tok = data_config.get("tokenizer", "builtin")
    if not tok or tok == "builtin":
        return None  # the built-in corpus ships with its own tokenizer
    from robertax import tokenizer  # pylint: disable=import-outside-toplevel
    try:
        return tokenizer.load(tok).fingerprint
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"config.data.tokenizer={tok!r}: {e} (give the tokenizer directory the "
                         "shards were made with; a shard directory keeps a copy in tokenizer/)"
                         ) from None


def _word_starts(shard_dir: str) -> np.ndarray:
    path = os.path.join(shard_dir, "tokenizer")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"config.data.whole_word_mask needs the corpus tokenizer's "
                                f"word-start table, but {path} does not exist")
    from robertax import tokenizer  # pylint: disable=import-outside-toplevel
    return np.asarray(tokenizer.load(path).word_start_table(), bool)


def _mask_spec(data_config, manifest, shard_dir, word_starts) -> masking.MaskSpec:
    special = manifest["special_ids"]
    count = _choice(data_config, "mask_count", masking.COUNT_MODES)
    if data_config.whole_word_mask and word_starts is None:
        word_starts = _word_starts(shard_dir)
    spec = masking.make_spec(
        manifest["vocab_size"], [special[k] for k in ("bos", "pad", "eos", "unk", "mask")],
        special["mask"], data_config.max_predictions, mask_prob=data_config.mask_prob,
        mask_token_prob=data_config.mask_token_prob,
        random_token_prob=data_config.random_token_prob, count=count,
        word_starts=word_starts if data_config.whole_word_mask else None)
    n, p, P = data_config.max_length - 2, data_config.mask_prob, data_config.max_predictions
    need = masking.exact_capacity_needed(n, p)
    if count == "exact" and P < need:
        raise ValueError(f"config.data.max_predictions={P} is below the {need} tokens exact "
                         f"masking may choose in a row of {data_config.max_length}")
    safe = math.ceil(n * p + 4 * math.sqrt(n * p * (1 - p)))
    if (count == "independent" or data_config.whole_word_mask) and P < safe:
        logging.warning("config.data.max_predictions=%d may overflow with %s masking; chosen "
                        "tokens beyond it are left unmasked and counted in mlm_overflow "
                        "(raise it to ~%d to make that rare)", P,
                        "whole-word" if data_config.whole_word_mask else "independent", safe)
    return spec


def _read_corpus(shard_dir, split, data_config, tokenizer_fingerprint):
    corpus = shards.ShardedCorpus(shard_dir, split)
    manifest_path = os.path.join(shard_dir, shards.MANIFEST)
    for key in ("special_ids", "vocab_size", "tokenizer"):
        if key not in corpus.manifest:
            raise KeyError(f"{manifest_path} has no {key!r}")
    missing = {"bos", "pad", "eos", "unk", "mask"} - set(corpus.manifest["special_ids"])
    if missing:
        raise KeyError(f"{manifest_path}: special_ids lacks {sorted(missing)}")
    if tokenizer_fingerprint is None:
        tokenizer_fingerprint = _config_fingerprint(data_config)
    found = corpus.manifest["tokenizer"].get("fingerprint")
    if tokenizer_fingerprint is not None and found != tokenizer_fingerprint:
        raise ValueError(
            f"{manifest_path}: the shards were made with tokenizer fingerprint {found!r}, but "
            f"config.data.tokenizer={data_config.get('tokenizer')!r} has "
            f"{tokenizer_fingerprint!r}; preprocess the corpus again with this tokenizer")
    return corpus


class SentenceReader:
    """Contiguous ranges of sentence records, read straight from the ArrayRecord shards.

    Every format reads whole runs of sentences, so one ranged read per run replaces Grain's
    record-at-a-time `ArrayRecordDataSource` (measured on a 2-core host: ~1.5 µs instead of
    ~50 µs a sentence). A small read-ahead serves a run from one file read (with none, ranged
    reads take a slow path: ~14 µs a sentence); one thread, as a Grain worker is one core.
    """

    OPTIONS = "readahead_buffer_size:65536,max_parallelism:1"

    def __init__(self, paths: list[str], dtype, num_sentences: int):
        from array_record.python import array_record_module as arm  # pylint: disable=import-outside-toplevel
        self.paths, self.dtype = list(paths), np.dtype(dtype)
        counts = []
        for path in self.paths:
            reader = arm.ArrayRecordReader(path, self.OPTIONS)
            counts.append(reader.num_records())
            reader.close()
        self.bounds = np.concatenate([[0], np.cumsum(counts)]).tolist()
        if self.bounds[-1] != num_sentences:
            raise ValueError(f"{os.path.dirname(self.paths[0])}: the shards hold "
                             f"{self.bounds[-1]} sentences, the index {num_sentences}")
        self._readers = {}

    def __getstate__(self):  # readers are opened again in each Grain worker
        return {**self.__dict__, "_readers": {}}

    def _reader(self, k: int):
        if k not in self._readers:
            from array_record.python import array_record_module as arm  # pylint: disable=import-outside-toplevel
            self._readers[k] = arm.ArrayRecordReader(self.paths[k], self.OPTIONS)
        return self._readers[k]

    def __call__(self, start: int, stop: int) -> list[np.ndarray]:
        """Token ids (int32) of sentences [start, stop)."""
        out = []
        while start < stop:
            k = bisect.bisect_right(self.bounds, start) - 1
            end, base = min(stop, self.bounds[k + 1]), self.bounds[k]
            out += [np.frombuffer(r, self.dtype).astype(np.int32)
                    for r in self._reader(k).read(start - base, end - base)]
            start = end
        return out


class _RecordEpoch:
    """Index in the repeated stream -> (record, epoch). A class, so it pickles into workers."""

    def __init__(self, num_records: int):
        self.num_records = num_records

    def __call__(self, index, record):
        return int(record), int(index // self.num_records)


class RowBuilder:
    """(record, epoch) -> one masked training row; see the module docstring for the fields."""

    def __init__(self, corpus, fmt, spec, *, seed, static, max_length):
        self.fmt, self.spec = fmt, spec
        self.seed, self.static, self.L = seed, static, max_length
        self.pad = int(corpus.manifest["special_ids"]["pad"])
        self.base_rows = len(fmt)
        self.read = SentenceReader(corpus.paths, corpus.dtype, corpus.index.num_sentences)

    def __call__(self, element):
        record, epoch = element
        rng = np.random.default_rng([self.seed, record, 0 if self.static else epoch])
        inputs = self.fmt.build(record % self.base_rows, rng, self.read)
        L, pad, K = self.L, self.pad, self.fmt.nsp_capacity
        ids = np.full(L, pad, np.int32)
        seg = np.zeros(L, np.int32)
        pos = np.full(L, pad, np.int32)
        nsp_pos, nsp_lab, nsp_w = np.zeros(K, np.int32), np.zeros(K, np.int32), np.zeros(K, np.float32)
        k = 0
        for j, inp in enumerate(inputs):
            n = len(inp.tokens)
            ids[k:k + n] = inp.tokens
            seg[k:k + n] = j + 1
            pos[k:k + n] = np.arange(pad + 1, pad + 1 + n)
            if K:
                nsp_pos[j], nsp_lab[j], nsp_w[j] = k, inp.nsp_label, 1.0
            k += n
        m = masking.mask_row(ids, rng, self.spec)
        out = {"input_ids": m.input_ids, "original_ids": ids, "segment_ids": seg,
               "position_ids": pos, "mlm_positions": m.positions, "mlm_targets": m.targets,
               "mlm_weights": m.weights, "mlm_overflow": np.int32(m.overflow),
               "example_ids": np.int64(record), "epoch": np.int32(epoch)}
        if K:
            out.update(nsp_positions=nsp_pos, nsp_labels=nsp_lab, nsp_weights=nsp_w)
        return out


def make_examples(data_config, shard_dir: str, split: str, *, seed: int, process_index=0,
                  process_count=1, epochs=None, tokenizer_fingerprint=None, word_starts=None,
                  min_records=1) -> grain.MapDataset:
    """This host's stream of single rows (unbatched); `make_dataset` batches it.

    `tokenizer_fingerprint` (default: that of config.data.tokenizer when it names a directory)
    must match the shards'. `word_starts` ([vocab] bool) overrides the corpus tokenizer's table
    for whole-word masking.
    """
    fmt_name = _choice(data_config, "format", formats.FORMATS)
    mode = _choice(data_config, "masking", MASKING)
    if not 0 <= seed < 2**63:
        raise ValueError(f"data seed {seed} must be a non-negative integer")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    corpus = _read_corpus(shard_dir, split, data_config, tokenizer_fingerprint)
    special = corpus.manifest["special_ids"]
    spec = _mask_spec(data_config, corpus.manifest, shard_dir, word_starts)
    fmt = formats.make_format(fmt_name, corpus.index.sentence_lengths, corpus.index.doc_offsets(),
                              data_config.max_length, special["bos"], special["eos"],
                              data_config.get("max_inputs_per_row", 16))
    dupes = data_config.dupe_factor if mode == "static" else 1
    if dupes < 1:
        raise ValueError(f"config.data.dupe_factor={dupes} must be >= 1")
    num_records = len(fmt) * dupes
    if num_records < min_records:
        raise ValueError(
            f"{shard_dir} split {split!r} gives {num_records} rows of {data_config.max_length} "
            f"tokens in format {fmt_name} ({corpus.index.num_tokens} tokens), fewer than one "
            f"batch of {min_records}: use a bigger corpus or a smaller batch_size")
    shuffle_seed = int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])
    records = grain.MapDataset.range(num_records).shuffle(seed=shuffle_seed)
    if epochs != 1:
        records = records.repeat(epochs)
    records = records.map_with_index(_RecordEpoch(num_records))
    records = records[process_index::process_count]
    return records.map(RowBuilder(corpus, fmt, spec, seed=seed, static=mode == "static",
                                  max_length=data_config.max_length))


def make_dataset(data_config, shard_dir: str, split: str, *, batch_size: int, seed: int,
                 process_index=0, process_count=1, epochs=None, **kwargs) -> grain.MapDataset:
    """Batches of this host's share (batch_size // process_count rows) of the global batch."""
    if batch_size % process_count:
        raise ValueError(f"batch_size={batch_size} is not divisible by {process_count} processes")
    examples = make_examples(data_config, shard_dir, split, seed=seed,
                             process_index=process_index, process_count=process_count,
                             epochs=epochs, min_records=batch_size, **kwargs)
    return examples.batch(batch_size // process_count, drop_remainder=True)


def make_iterator(data_config, shard_dir: str, split: str, *, batch_size: int, seed: int,
                  process_index=0, process_count=1, epochs=None, num_workers=None, **kwargs):
    """A checkpointable iterator over `make_dataset`, in `num_workers` processes (default
    `data_config.num_workers`; 0 reads in this process).

    Save and restore it with Orbax: `grain.checkpoint.CheckpointSave(it)` /
    `grain.checkpoint.CheckpointRestore(fresh_it)` inside `ocp.args.Composite`. Workers need absl
    flags parsed (`absl.app.run`) and the entry point under `if __name__ == "__main__"`.
    """
    ds = make_dataset(data_config, shard_dir, split, batch_size=batch_size, seed=seed,
                      process_index=process_index, process_count=process_count, epochs=epochs,
                      **kwargs)
    return iterate(ds, data_config.num_workers if num_workers is None else num_workers)


def iterate(ds: grain.MapDataset, num_workers: int = 0):
    """An iterator over `ds` that reads ahead: in a thread, or in `num_workers` processes."""
    # One reader thread: Grain's default 16 threads slow a 2-core host down (ECOSYSTEM.md).
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4))
    if num_workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(it)
