"""Corpus readers: raw text in, documents (lists of paragraph/sentence lines) out.

Formats:
- `text`: fairseq's layout — one sentence or paragraph per line, a blank line between documents;
  plain or gzipped (`.gz`), many files by glob.
- `jsonl`: one JSON object per line, one document each, its text in a field (`text_key`);
  newlines inside the text separate paragraphs.
- `tfds`: a prepared TensorFlow Datasets dataset read through `tfds.data_source` (no TF needed);
  one example is one document.

Work is cut into `Unit`s (a byte range of a file that starts and ends on a document boundary, or
a range of TFDS examples) so preprocessing can spread it over processes; how a corpus is cut never
changes which documents it holds or their order. Readers skip bad input they can survive (invalid
UTF-8, absurdly long lines, empty documents) and count every skip in `Stats` with where it was;
input they cannot (a missing file, malformed JSON, a missing field) raises naming file:line.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import os
from typing import Iterator, Sequence

from robertax.data import tfds_source

FORMATS = ("text", "jsonl", "tfds")
MAX_EXAMPLES = 5  # locations kept per skip reason, to show the user where to look
# Skip reasons, each counting one unit of input (see robertax.preprocess for how they add up).
LINE_SKIPS = ("invalid_utf8_line", "line_too_long")
DOCUMENT_SKIPS = ("invalid_utf8_document", "empty_document")


@dataclasses.dataclass
class Stats:
    """Input counts and skips of one reader pass (summed over units by preprocessing)."""

    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict = dataclasses.field(default_factory=dict)

    def skip(self, reason: str, where, n: int = 1) -> None:
        self.skipped[reason] += n
        seen = self.examples.setdefault(reason, [])
        if len(seen) < MAX_EXAMPLES:
            seen.append(where)

    def resolve(self) -> None:
        """Turns kept locations into "path:line" strings."""
        self.examples = {r: [_resolve(p) for p in places] for r, places in self.examples.items()}

    def merge(self, other: "Stats") -> None:
        self.counts.update(other.counts)
        self.skipped.update(other.skipped)
        for reason, places in other.examples.items():
            seen = self.examples.setdefault(reason, [])
            seen.extend(places[:MAX_EXAMPLES - len(seen)])

    def to_json(self) -> dict:
        return {"counts": dict(self.counts), "skipped": dict(self.skipped), "examples": self.examples}

    @classmethod
    def from_json(cls, d: dict) -> "Stats":
        return cls(collections.Counter(d["counts"]), collections.Counter(d["skipped"]), d["examples"])


@dataclasses.dataclass(frozen=True)
class Document:
    lines: list  # non-blank, stripped paragraphs (or sentences), in order
    key: tuple  # (source file/dataset number, byte offset or example index): stable document id
    where: object  # "path:line", or what `_resolve` turns into it


@dataclasses.dataclass(frozen=True)
class Unit:
    """One piece of work: bytes [start, end) of a file, or examples [start, end) of a TFDS split."""

    fmt: str
    source_id: int
    path: str  # file path, or the TFDS dataset name
    start: int
    end: int  # -1: to the end of the file (gzip cannot seek)
    text_key: str = "text"
    max_line_bytes: int = 100_000
    tfds_split: str = "train"
    tfds_data_dir: str | None = None


@dataclasses.dataclass(frozen=True)
class Source:
    """What to read: files matched by globs (text/jsonl) or one TFDS dataset."""

    fmt: str
    paths: tuple  # resolved file paths, or (dataset name,) for tfds
    text_key: str = "text"
    max_line_bytes: int = 100_000
    tfds_split: str = "train"
    tfds_data_dir: str | None = None

    def describe(self) -> list[dict]:
        """One entry per input, for the manifest (and to notice changed inputs on re-runs)."""
        if self.fmt == "tfds":
            return [{"tfds": self.paths[0], "split": self.tfds_split, "data_dir": self.tfds_data_dir,
                     "examples": len(tfds_source.open_source(self.paths[0], self.tfds_split, self.tfds_data_dir)),
                     "text_key": self.text_key}]
        out = []
        for p in self.paths:
            st = os.stat(p)
            out.append({"path": os.path.abspath(p), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
        return out

    def units(self, chunk_bytes: int = 32 << 20, chunk_examples: int = 20_000) -> list[Unit]:
        common = dict(fmt=self.fmt, text_key=self.text_key, max_line_bytes=self.max_line_bytes,
                      tfds_split=self.tfds_split, tfds_data_dir=self.tfds_data_dir)
        if self.fmt == "tfds":
            n = len(tfds_source.open_source(self.paths[0], self.tfds_split, self.tfds_data_dir))
            return [Unit(source_id=0, path=self.paths[0], start=s, end=min(s + chunk_examples, n), **common)
                    for s in range(0, n, chunk_examples)]
        units = []
        for i, p in enumerate(self.paths):
            bounds = [0, -1] if p.endswith(".gz") else _chunk_bounds(p, chunk_bytes, self.fmt)
            units += [Unit(source_id=i, path=p, start=a, end=b, **common) for a, b in zip(bounds, bounds[1:])]
        return units


def make_source(patterns: str | Sequence[str], fmt: str = "text", *, text_key: str = "text",
                max_line_bytes: int = 100_000, tfds_split: str = "train",
                tfds_data_dir: str | None = None) -> Source:
    """Resolves comma-separated globs (sorted, so the order is reproducible) or a TFDS name."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown corpus format {fmt!r}; one of {FORMATS}")
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [p for p in os.fspath(patterns).split(",") if p]
    if fmt == "tfds":
        if len(patterns) != 1:
            raise ValueError(f"--format=tfds takes one dataset name (e.g. wikipedia/20230601.en), got {patterns}")
        return Source(fmt, (patterns[0],), text_key, max_line_bytes, tfds_split, tfds_data_dir)
    paths = []
    for pattern in patterns:
        found = sorted(glob.glob(os.path.expanduser(pattern))) if glob.has_magic(pattern) else [pattern]
        if not found:
            raise FileNotFoundError(f"no file matches {pattern!r}")
        for p in found:
            if not os.path.isfile(p):
                raise FileNotFoundError(f"corpus file {p} does not exist (or is not a file)")
        paths += found
    return Source(fmt, tuple(paths), text_key, max_line_bytes)


def _chunk_bounds(path: str, chunk_bytes: int, fmt: str) -> list[int]:
    """Byte offsets that cut a file into ~chunk_bytes pieces at document starts."""
    size = os.path.getsize(path)
    bounds = [0]
    with open(path, "rb") as f:
        while bounds[-1] + chunk_bytes < size:
            f.seek(bounds[-1] + chunk_bytes)
            f.readline()  # finish the line we landed in
            while True:
                line = f.readline()
                if not line:
                    break
                # text: a document starts after a blank line; jsonl: after any line.
                if fmt == "jsonl" or not line.strip():
                    break
            if f.tell() >= size:
                break
            bounds.append(f.tell())
    return bounds + [size]


def _line_number(path: str, offset: int) -> int:
    """1-based line number of the byte at `offset` (only computed for messages)."""
    n, done = 1, 0
    with open(path, "rb") as f:
        while done < offset:
            block = f.read(min(1 << 24, offset - done))
            if not block:
                break
            n += block.count(b"\n")
            done += len(block)
    return n


def _raw_lines(unit: Unit) -> Iterator[tuple[int, int, bytes]]:
    """(line number within the unit, byte offset, line bytes) of the unit's lines."""
    opener = gzip.open if unit.path.endswith(".gz") else open
    with opener(unit.path, "rb") as f:
        if unit.start:
            f.seek(unit.start)
        pos = unit.start
        for n, line in enumerate(f):
            if unit.end >= 0 and pos >= unit.end:
                return
            yield n, pos, line
            pos += len(line)


def _at(unit: Unit, n: int):
    """Where line n of a unit is: "path:line" when cheap, else [path, unit start, n], turned into
    "path:line" by `Stats.resolve` (only for the few locations kept, so no file is re-read per unit)."""
    return f"{unit.path}:{n + 1}" if unit.start == 0 else [unit.path, unit.start, n]


def _resolve(place) -> str:
    if isinstance(place, str):
        return place
    path, start, n = place
    return f"{path}:{_line_number(path, start) + n}"


def _paragraphs(text: str, stats: Stats, where, max_line_bytes: int) -> list[str]:
    lines = []
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        stats.counts["lines"] += 1
        if len(line.encode("utf-8")) > max_line_bytes:
            stats.skip("line_too_long", where)
            continue
        lines.append(line)
    return lines


def read_unit(unit: Unit, stats: Stats) -> Iterator[Document]:
    """The documents of one unit; skips are counted in `stats`."""
    if unit.fmt == "tfds":
        yield from _read_tfds(unit, stats)
        return
    if unit.fmt == "jsonl":
        yield from _read_jsonl(unit, stats)
        return
    lines, key, first = [], None, 0
    for n, pos, raw in _raw_lines(unit):
        if n == 0 and unit.start == 0 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte-order mark is not text
        blank, line = not raw.strip(), None
        if not blank and len(raw) <= unit.max_line_bytes:
            try:
                line = raw.decode("utf-8").strip()
                blank = not line  # only Unicode whitespace (e.g. NBSP): still a blank line
            except UnicodeDecodeError:
                pass
        if blank:
            if key is not None:
                yield from _finish(lines, (unit.source_id, key), _at(unit, first), stats)
            lines, key = [], None
            continue
        if key is None:
            key, first = pos, n
        stats.counts["lines"] += 1
        if len(raw) > unit.max_line_bytes:
            stats.skip("line_too_long", _at(unit, n))
        elif line is None:
            stats.skip("invalid_utf8_line", _at(unit, n))
        else:
            lines.append(line)
    if key is not None:
        yield from _finish(lines, (unit.source_id, key), _at(unit, first), stats)


def _finish(lines, key, where, stats: Stats) -> Iterator[Document]:
    stats.counts["documents"] += 1
    if not lines:
        stats.skip("empty_document", where)
        return
    yield Document(lines, key, where)


def _read_jsonl(unit: Unit, stats: Stats) -> Iterator[Document]:
    for n, pos, raw in _raw_lines(unit):
        if not raw.strip():
            continue  # blank lines between records carry nothing
        stats.counts["documents"] += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            stats.skip("invalid_utf8_document", _at(unit, n))
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{_resolve(_at(unit, n))}: not valid JSON ({e}); is --format=jsonl right?") from e
        if not isinstance(record, dict) or unit.text_key not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise KeyError(f"{_resolve(_at(unit, n))}: no field {unit.text_key!r} (has {keys}); set --text_key")
        value = record[unit.text_key]
        if not isinstance(value, str):
            raise ValueError(f"{_resolve(_at(unit, n))}: field {unit.text_key!r} is {type(value).__name__}, not text")
        place = _at(unit, n)
        lines = _paragraphs(value, stats, place, unit.max_line_bytes)
        if not lines:
            stats.skip("empty_document", place)
            continue
        yield Document(lines, (unit.source_id, pos), place)


def _read_tfds(unit: Unit, stats: Stats) -> Iterator[Document]:
    source = tfds_source.open_source(unit.path, unit.tfds_split, unit.tfds_data_dir)
    for i, record in enumerate(tfds_source.records(source, unit.start, unit.end), unit.start):
        where = f"{unit.path}[{unit.tfds_split}]#{i}"
        stats.counts["documents"] += 1
        if unit.text_key not in record:
            raise KeyError(f"{where}: no feature {unit.text_key!r} (has {sorted(record)}); set --text_key")
        value = record[unit.text_key]
        if isinstance(value, bytes):  # real TFDS text features are bytes (mock data gives str)
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                stats.skip("invalid_utf8_document", where)
                continue
        if not isinstance(value, str):
            raise ValueError(f"{where}: feature {unit.text_key!r} is {type(value).__name__}, not text")
        lines = _paragraphs(value, stats, where, unit.max_line_bytes)
        if not lines:
            stats.skip("empty_document", where)
            continue
        yield Document(lines, (unit.source_id, i), where)


def iter_documents(source: Source, stats: Stats | None = None) -> Iterator[Document]:
    stats = stats if stats is not None else Stats()
    for unit in source.units():
        yield from read_unit(unit, stats)


def iter_lines(source: Source, stats: Stats | None = None) -> Iterator[str]:
    """Every kept line of every document (for tokenizer training)."""
    for doc in iter_documents(source, stats):
        yield from doc.lines
