"""The on-disk format of tokenized corpora, shared by preprocessing and the input pipeline.

A preprocessed corpus is a directory:

    manifest.json              counts, tokenizer fingerprint and special ids, the shard list
    train-00000-of-00004.array_record ...   one record per *sentence*: its token ids, no specials
    train.index.npz            `doc_sentences` [D] int64: sentences per document (documents in
                               shard order), `sentence_lengths` [S] int32: tokens per sentence
    valid-00000-of-00001.array_record, valid.index.npz

One record per sentence (as fairseq's line-level datasets) keeps document and sentence boundaries
and lets the pipeline compute every block from the index alone (`sentence_lengths`), so it
keeps random access: a block is a contiguous range of sentence records. Token ids are stored as
uint16 when the vocabulary fits (RoBERTa's 50,265 does), else int32; the manifest says which.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import numpy as np

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.int32)


def shard_name(split: str, i: int, n: int) -> str:
    return f"{split}-{i:05d}-of-{n:05d}.array_record"


def encode_sentence(ids: Sequence[int] | np.ndarray, dtype: np.dtype) -> bytes:
    return np.asarray(ids, dtype=dtype).tobytes()


def decode_sentence(record: bytes, dtype: np.dtype) -> np.ndarray:
    return np.frombuffer(record, dtype=dtype).astype(np.int32)


def open_shard_writer(path: str):
    """An ArrayRecord writer for one shard (group_size 1: Grain needs it for random access).

    Write `encode_sentence(ids, dtype)` records and `close()` it; for writing as records arrive."""
    from array_record.python import array_record_module as arm

    return arm.ArrayRecordWriter(path, "group_size:1")


def write_shard(path: str, sentences: Sequence[Sequence[int]], dtype: np.dtype) -> None:
    """Writes one ArrayRecord shard (group_size 1: Grain needs it for random access)."""
    writer = open_shard_writer(path)
    try:
        for ids in sentences:
            writer.write(encode_sentence(ids, dtype))
    finally:
        writer.close()


@dataclasses.dataclass(frozen=True)
class SplitIndex:
    doc_sentences: np.ndarray  # [D] sentences per document
    sentence_lengths: np.ndarray  # [S] tokens per sentence

    @property
    def num_documents(self) -> int:
        return len(self.doc_sentences)

    @property
    def num_sentences(self) -> int:
        return len(self.sentence_lengths)

    @property
    def num_tokens(self) -> int:
        return int(self.sentence_lengths.sum())

    def doc_offsets(self) -> np.ndarray:
        """[D+1] index of each document's first sentence (and the end)."""
        return np.concatenate([[0], np.cumsum(self.doc_sentences)]).astype(np.int64)


def write_index(path: str, index: SplitIndex) -> None:
    np.savez(path, doc_sentences=index.doc_sentences.astype(np.int64),
             sentence_lengths=index.sentence_lengths.astype(np.int32))


def read_index(path: str) -> SplitIndex:
    with np.load(path) as f:
        return SplitIndex(doc_sentences=f["doc_sentences"], sentence_lengths=f["sentence_lengths"])


def read_manifest(directory: str) -> dict:
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {directory} a preprocessed corpus? "
                                "Run `python -m robertax.preprocess` first.")
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {manifest.get('format_version')!r}, "
                         f"this robertax reads {FORMAT_VERSION}")
    return manifest


class ShardedCorpus:
    """Random access to one split of a preprocessed corpus: sentence records plus the index."""

    def __init__(self, directory: str, split: str):
        self.directory = directory
        self.manifest = read_manifest(directory)
        if split not in self.manifest["splits"]:
            raise KeyError(f"{directory}/{MANIFEST} has no split {split!r} "
                           f"(has {sorted(self.manifest['splits'])})")
        info = self.manifest["splits"][split]
        self.dtype = np.dtype(self.manifest["token_dtype"])
        self.index = read_index(os.path.join(directory, info["index"]))
        self.paths = [os.path.join(directory, s) for s in info["shards"]]
        self._source = None

    @property
    def source(self):
        if self._source is None:  # opened lazily so the object pickles into Grain workers
            import grain
            self._source = grain.sources.ArrayRecordDataSource(self.paths)
        return self._source

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_source"] = None
        return state

    def sentences(self, start: int, stop: int) -> list[np.ndarray]:
        """Token ids of sentences [start, stop) as int32 arrays."""
        records = self.source.__getitems__(list(range(start, stop)))
        return [decode_sentence(r, self.dtype) for r in records]
