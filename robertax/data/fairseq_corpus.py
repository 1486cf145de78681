"""fairseq-binarized corpora -> robertax shards, so fairseq users pretrain without re-tokenizing.

    python -m robertax.data.fairseq_corpus --input=data-bin/wikitext-103 --output=shards/wt103 \
        [--tokenizer=DIR] [--dictionary=dict.txt] [--valid=PREFIX]

--input is a fairseq data directory (`train.bin/.idx`, `train1.*`, ... as fairseq's
`load_indexed_dataset(combine=True)` reads them, `valid.*`, `dict.txt`) or one prefix
(`PREFIX.bin` + `PREFIX.idx`, dict.txt beside it). The output is robertax's shard format
(robertax.data.shards); point `config.data.corpus` at it.

The binary format is fairseq's MMapIndexedDataset (`--dataset-impl mmap`, the default of
fairseq-preprocess):
  PREFIX.idx  b"MMIDIDX\\x00\\x00", <Q version = 1, <B dtype code, <Q N (sequences),
              [Megatron-LM's variant: <Q M], int32 sizes[N] (tokens), int64 pointers[N] (byte
              offsets into .bin), [Megatron: int64 doc_idx[M], document starts, first 0, last N]
  PREFIX.bin  the sequences' token ids back to back, in the dtype the code names
The two variants differ in the index's length, which tells them apart exactly.

Ids in the .bin are dictionary ids: `<s> <pad> </s> <unk>` = 0..3, dict.txt's line n = 4 + n,
and RoBERTa's `<mask>` after the last line — with RoBERTa's dict.txt, exactly RoBERTa's ids, so
they are copied unchanged. fairseq-preprocess writes one sequence per input line and appends
`</s>` (2) to each; robertax's records are sentences without specials (its formats add `<s>`/`</s>`
themselves), so one trailing `</s>` is stripped from each sequence. Documents: an empty line (a
sequence that was only `</s>`) separates documents, as fairseq's `--sample-break-mode
complete_doc` reads them, and Megatron's doc_idx starts a new one too. Empty lines become no
record; their count is in the manifest.

Without --tokenizer the manifest's tokenizer fingerprint is "fairseq-dict:<sha256 of dict.txt>";
with one (e.g. a directory with encoder.json + vocab.bpe + dict.txt), its fingerprint, and a copy
of it goes to `tokenizer/` for whole-word masking and decoding.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import struct
from typing import Iterator, Sequence

import numpy as np

import robertax
from robertax import fairseq
from robertax.data import shards

MAGIC = b"MMIDIDX\x00\x00"
_HEADER = len(MAGIC) + 8 + 1 + 8  # magic, version, dtype code, N
# fairseq's _code_to_dtype for the integer types; 6 and 7 are floating point (and 7 means
# float64 in fairseq but float32 in Megatron-core), never token ids, so they are refused.
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16,
          9: np.uint32, 10: np.uint64}
SPLITS = ("train", "valid")


@dataclasses.dataclass
class Index:
    dtype: np.dtype
    sizes: np.ndarray  # [N] int32 tokens per sequence
    pointers: np.ndarray  # [N] int64 byte offset of each sequence in the .bin
    doc_idx: np.ndarray | None  # [M] int64 document starts (Megatron's variant only)


def read_index(path: str) -> Index:
    with open(path, "rb") as f:
        head = f.read(_HEADER)
    if head.startswith(b"TNTIDX\x00\x00"):
        raise ValueError(f"{path}: fairseq's older IndexedDataset (--dataset-impl lazy/cached); "
                         "re-binarize with fairseq-preprocess --dataset-impl mmap")
    if len(head) < _HEADER or head[:len(MAGIC)] != MAGIC:
        raise ValueError(f"{path}: not an MMIDIDX index (fairseq --dataset-impl mmap); it starts "
                         f"{head[:len(MAGIC)]!r}, expected {MAGIC!r}")
    version, code, n = struct.unpack("<QBQ", head[len(MAGIC):])
    if version != 1:
        raise ValueError(f"{path}: index version {version}, this reader knows 1")
    if code not in DTYPES:
        raise ValueError(f"{path}: dtype code {code} is not an integer token type "
                         f"(known: {sorted(DTYPES)})")
    size = os.path.getsize(path)
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    offset, doc_idx = _HEADER, None
    if size != _HEADER + 12 * n:  # not fairseq's layout: Megatron's has a doc count and doc_idx
        (m,) = struct.unpack("<Q", bytes(raw[_HEADER:_HEADER + 8]))
        if size != _HEADER + 8 + 12 * n + 8 * m:
            raise ValueError(f"{path}: {size} bytes do not fit {n} sequences (fairseq's layout "
                             f"needs {_HEADER + 12 * n}) nor Megatron's with a document index")
        offset += 8
        doc_idx = np.frombuffer(raw, np.int64, m, offset + 12 * n)
    sizes = np.frombuffer(raw, np.int32, n, offset)
    pointers = np.frombuffer(raw, np.int64, n, offset + 4 * n)
    return Index(np.dtype(DTYPES[code]), sizes, pointers, doc_idx)


class IndexedDataset:
    """Random access to the sequences of PREFIX.bin/.idx (memory-mapped)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.index = read_index(prefix + ".idx")
        bin_path = prefix + ".bin"
        if not os.path.isfile(bin_path):
            raise FileNotFoundError(f"{bin_path} not found (the data of {prefix}.idx)")
        self.data = np.memmap(bin_path, dtype=np.uint8, mode="r") \
            if os.path.getsize(bin_path) else np.zeros(0, np.uint8)
        ix, item = self.index, self.index.dtype.itemsize
        ends = ix.pointers + ix.sizes.astype(np.int64) * item
        bad = np.flatnonzero((ix.sizes < 0) | (ix.pointers < 0) | (ix.pointers % item != 0)
                             | (ends > len(self.data)))
        if len(bad):
            i = int(bad[0])
            raise ValueError(f"{prefix}.idx: sequence {i} (pointer {ix.pointers[i]}, "
                             f"{ix.sizes[i]} tokens of {item} bytes) lies outside {bin_path} "
                             f"({len(self.data)} bytes) or is misaligned")
        d = ix.doc_idx
        if d is not None and len(d) and (d[0] != 0 or d[-1] != len(self) or np.any(np.diff(d) < 0)):
            raise ValueError(f"{prefix}.idx: doc_idx must rise from 0 to {len(self)}")

    def __len__(self) -> int:
        return len(self.index.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        start, n = int(self.index.pointers[i]), int(self.index.sizes[i])
        return np.frombuffer(self.data, self.index.dtype, n, start)

    def max_id(self) -> int:
        """Largest token id (and a check that none is negative)."""
        if not len(self.data):
            return -1
        item = self.index.dtype.itemsize
        ids = np.frombuffer(self.data, self.index.dtype, len(self.data) // item)
        if np.issubdtype(ids.dtype, np.signedinteger) and len(ids) and ids.min() < 0:
            raise ValueError(f"{self.prefix}.bin holds negative token ids")
        return int(ids.max()) if len(ids) else -1


def write_indexed(prefix: str, sequences: Sequence[Sequence[int]], dtype=np.uint16,
                  doc_idx: Sequence[int] | None = None) -> None:
    """Writes PREFIX.bin/.idx per the format above: fairseq's layout, or Megatron's when
    `doc_idx` (document starts, from 0 to len(sequences)) is given."""
    dtype = np.dtype(dtype)
    code = next((c for c, t in DTYPES.items() if np.dtype(t) == dtype), None)
    if code is None:
        raise ValueError(f"dtype {dtype} has no MMIDIDX code (integer types only)")
    arrays = [np.asarray(s, dtype=dtype) for s in sequences]
    sizes = np.array([len(a) for a in arrays], np.int32)
    pointers = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)[:-1]]).astype(np.int64) \
        * dtype.itemsize if len(arrays) else np.zeros(0, np.int64)
    with open(prefix + ".bin", "wb") as f:
        for a in arrays:
            f.write(a.tobytes())
    with open(prefix + ".idx", "wb") as f:
        f.write(MAGIC + struct.pack("<QBQ", 1, code, len(arrays)))
        if doc_idx is not None:
            f.write(struct.pack("<Q", len(doc_idx)))
        f.write(sizes.tobytes())
        f.write(pointers.tobytes())
        if doc_idx is not None:
            f.write(np.asarray(doc_idx, np.int64).tobytes())


@dataclasses.dataclass
class Counts:
    sequences: int = 0
    empty_lines: int = 0  # sequences with no token besides </s>: document separators
    eos_stripped: int = 0
    documents: int = 0
    sentences: int = 0
    tokens: int = 0


def documents(ds: IndexedDataset, eos: int, counts: Counts) -> Iterator[list[np.ndarray]]:
    """The dataset's documents, each a list of sentences with the trailing </s> removed."""
    starts = np.zeros(len(ds), bool)
    if ds.index.doc_idx is not None:
        starts[ds.index.doc_idx[ds.index.doc_idx < len(ds)]] = True
    doc: list[np.ndarray] = []
    for i in range(len(ds)):
        counts.sequences += 1
        if starts[i] and doc:
            yield doc
            doc = []
        ids = ds[i]
        if len(ids) and ids[-1] == eos:
            ids = ids[:-1]
            counts.eos_stripped += 1
        if not len(ids):
            counts.empty_lines += 1
            if doc:
                yield doc
            doc = []
            continue
        doc.append(ids)
    if doc:
        yield doc


def _prefixes(folder: str, split: str) -> list[str]:
    """split, split1, split2, ... while they exist (fairseq's combine=True)."""
    out, k = [], 0
    while os.path.isfile(os.path.join(folder, f"{split}{k or ''}.idx")):
        out.append(os.path.join(folder, f"{split}{k or ''}"))
        k += 1
    return out


def _write_split(out_dir: str, split: str, prefixes: list[str], dtype, vocab_size: int,
                 eos: int, sentences_per_shard: int) -> tuple[dict, Counts]:
    counts, docs, lengths, temp = Counts(), [], [], []
    writer, in_shard = None, 0
    for prefix in prefixes:
        ds = IndexedDataset(prefix)
        top = ds.max_id()
        if top >= vocab_size:
            i = next(i for i in range(len(ds)) if len(ds[i]) and ds[i].max() >= vocab_size)
            raise ValueError(f"{prefix}.bin: sequence {i} holds token id {int(ds[i].max())}, "
                             f"beyond the vocabulary of {vocab_size} (4 specials + dict.txt + "
                             "<mask>): is this the data's dictionary?")
        for doc in documents(ds, eos, counts):
            for ids in doc:
                if writer is None or in_shard >= sentences_per_shard:
                    if writer is not None:
                        writer.close()
                    temp.append(os.path.join(out_dir, f"{split}-{len(temp):05d}.tmp"))
                    writer, in_shard = shards.open_shard_writer(temp[-1]), 0
                writer.write(shards.encode_sentence(ids, dtype))
                in_shard += 1
                lengths.append(len(ids))
            docs.append(len(doc))
    if writer is not None:
        writer.close()
    names = [shards.shard_name(split, k, len(temp)) for k in range(len(temp))]
    for t, name in zip(temp, names):
        os.replace(t, os.path.join(out_dir, name))
    index = shards.SplitIndex(np.array(docs, np.int64), np.array(lengths, np.int32))
    shards.write_index(os.path.join(out_dir, f"{split}.index.npz"), index)
    counts.documents, counts.sentences, counts.tokens = (index.num_documents,
                                                         index.num_sentences, index.num_tokens)
    info = {"shards": names, "index": f"{split}.index.npz", "documents": index.num_documents,
            "sentences": index.num_sentences, "tokens": index.num_tokens,
            "max_sentence_tokens": int(index.sentence_lengths.max(initial=0))}
    return info, counts


def to_shards(source: str, output: str, *, valid: str | None = None,
              dictionary: str | None = None, tokenizer: str | None = None,
              sentences_per_shard: int = 1 << 20, overwrite: bool = False) -> dict:
    """Converts fairseq-binarized data (`source`: a data directory or one PREFIX) into a robertax
    shard directory `output`; returns its manifest. See the module docstring."""
    if os.path.isdir(source):
        train = _prefixes(source, "train")
        valid_prefixes = [valid] if valid else _prefixes(source, "valid")
        folder = source
    else:
        train, valid_prefixes = [source], [valid] if valid else []
        folder = os.path.dirname(os.path.abspath(source))
    missing = [p + ".idx" for p in train + valid_prefixes if not os.path.isfile(p + ".idx")]
    if not train or missing:
        raise FileNotFoundError(f"{source}: no fairseq data at "
                                f"{', '.join(missing) or os.path.join(source, 'train.idx')}")
    dictionary = dictionary or os.path.join(folder, fairseq.DICT_FILE)
    if not os.path.isfile(dictionary):
        raise FileNotFoundError(f"{dictionary} not found: the fairseq dictionary of {source} "
                                "(pass --dictionary)")
    vocab_size = fairseq.dictionary_vocab_size(dictionary)
    special = {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": vocab_size - 1}
    digest = fairseq.file_sha256(dictionary)
    tok_info = {"fingerprint": f"fairseq-dict:{digest}", "kind": "fairseq-dict", "path": None}
    tok = None
    if tokenizer:
        from robertax import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
        tok = tokenizer_lib.load(tokenizer)
        if tok.vocab_size != vocab_size or tok.special_tokens != special:
            raise ValueError(f"tokenizer {tokenizer} (vocabulary {tok.vocab_size}, specials "
                             f"{tok.special_tokens}) does not match {dictionary} (vocabulary "
                             f"{vocab_size}, specials {special})")
        tok_info = {"fingerprint": tok.fingerprint, "kind": tok.kind, "path": "tokenizer"}

    os.makedirs(output, exist_ok=True)
    if os.path.exists(os.path.join(output, shards.MANIFEST)) and not overwrite:
        raise FileExistsError(f"{output} already holds a corpus ({shards.MANIFEST}); "
                              "use another --output or pass --overwrite")
    for name in os.listdir(output):  # only our own file names, from an earlier run
        if name.startswith(SPLITS) and name.endswith((".array_record", ".index.npz", ".tmp")) \
                or name == shards.MANIFEST:
            os.remove(os.path.join(output, name))
    if tok is not None:
        tok.save(os.path.join(output, "tokenizer"))

    dtype = shards.token_dtype(vocab_size)
    splits, inputs = {}, {}
    for split, prefixes in (("train", train), ("valid", valid_prefixes)):
        splits[split], counts = _write_split(output, split, prefixes, dtype, vocab_size,
                                             special["eos"], sentences_per_shard)
        inputs[split] = dataclasses.asdict(counts)
        if not prefixes:
            logging.warning("%s: no validation data (valid.bin/.idx); the valid split is empty",
                            source)
    if splits["train"]["documents"] == 0:
        raise ValueError(f"{source}: no non-empty sequences in {train}")
    manifest = {
        "format_version": shards.FORMAT_VERSION,
        "token_dtype": dtype.name,
        "vocab_size": vocab_size,
        "tokenizer": tok_info,
        "special_ids": special,
        "splits": splits,
        "input": inputs,
        "accounting": {"sequences": "input.*.sequences = sentences + empty_lines (each "
                                    "fairseq line is one sentence record, less one trailing "
                                    "</s>; empty lines only separate documents)"},
        "sources": {"format": "fairseq-mmap", "train": train, "valid": valid_prefixes,
                    "dictionary": {"path": os.path.abspath(dictionary), "sha256": digest}},
        "robertax_version": robertax.__version__,
    }
    path = os.path.join(output, shards.MANIFEST)
    with open(path + ".tmp", "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(path + ".tmp", path)  # last: a directory with a manifest is complete
    return manifest


def main(argv=None) -> None:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m robertax.data.fairseq_corpus",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="fairseq data dir or PREFIX")
    parser.add_argument("--output", required=True, help="robertax shard directory")
    parser.add_argument("--valid", help="PREFIX of the validation data (default: valid* in a "
                        "data dir)")
    parser.add_argument("--dictionary", help="dict.txt (default: beside the data)")
    parser.add_argument("--tokenizer", help="tokenizer directory (robertax.tokenizer.load)")
    parser.add_argument("--sentences_per_shard", type=int, default=1 << 20)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    manifest = to_shards(args.input, args.output, valid=args.valid, dictionary=args.dictionary,
                         tokenizer=args.tokenizer, sentences_per_shard=args.sentences_per_shard,
                         overwrite=args.overwrite)
    for split, s in manifest["splits"].items():
        print(f"{split}: {s['documents']:,} documents, {s['sentences']:,} sentences, "
              f"{s['tokens']:,} tokens, {len(s['shards'])} shards")
    print(f"wrote {os.path.join(args.output, shards.MANIFEST)}")


if __name__ == "__main__":
    main()
