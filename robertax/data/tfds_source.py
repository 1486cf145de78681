"""Prepared TensorFlow Datasets read by index, without TensorFlow: the one place robertax opens
TFDS (pretraining corpora with `--format=tfds`; GLUE, SQuAD and RACE with
`config.data_dir="tfds"`). Nothing is ever downloaded.

`tfds.data_source` needs a dataset prepared in array_record format. On a machine with network:

    tfds.builder("glue/mnli", data_dir=DIR, file_format="array_record").download_and_prepare()

then give DIR as the data dir (`--tfds_data_dir`, `config.tfds_data_dir`) or in `TFDS_DATA_DIR`
(default ~/tensorflow_datasets).
"""

from __future__ import annotations

import os
from typing import Iterator

_CHUNK = 1024  # records per read: array_record's batched read is several times faster


class NotPrepared(ValueError):
    """The dataset is known to TFDS but not prepared (for random access) where it was looked for."""


def open_source(name: str, split: str, data_dir: str | None = None):
    """`tfds.data_source(name, split)`, with errors that say which dataset, where it was
    looked for and how to prepare it."""
    import tensorflow_datasets as tfds
    # Without TensorFlow the legacy text builders (glue, wikipedia, c4, ...) register only
    # when this module is imported explicitly (see ECOSYSTEM.md, section 5).
    import tensorflow_datasets.text  # noqa: F401

    where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    except tfds.core.registered.DatasetNotFoundError as e:  # (a ValueError: test it first)
        raise ValueError(f"TFDS has no dataset {name!r}: {str(e).splitlines()[0]}") from None
    except ValueError as e:
        if "split" in str(e).lower():  # "Unknown split 'dev'. Should be one of [...]"
            raise ValueError(f"TFDS dataset {name!r}: {e}") from None
        cause = e
    except Exception as e:  # noqa: BLE001 -- not prepared, or prepared as TFRecord: say what to do
        cause = e
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    raise NotPrepared(
        f"TFDS dataset {name!r} split {split!r} is not prepared for random access in {where} "
        f"({type(cause).__name__}: {first}). Prepare it there in array_record format, on a "
        f"machine with network: tfds.builder({name!r}, data_dir=DIR, "
        "file_format='array_record').download_and_prepare(); then give DIR as the TFDS data "
        "dir or in TFDS_DATA_DIR. robertax never downloads.") from cause


def records(source, start: int = 0, end: int | None = None) -> Iterator[dict]:
    """Records start..end of a source, in order, read in chunks."""
    end = len(source) if end is None else end
    batched = getattr(source, "__getitems__", None)
    for lo in range(start, end, _CHUNK):
        keys = list(range(lo, min(lo + _CHUNK, end)))
        if batched is not None:
            try:
                chunk = batched(keys)
            except TypeError:  # tfds.testing.mock_data's sources break on batched reads
                batched, chunk = None, [source[i] for i in keys]
        else:
            chunk = [source[i] for i in keys]
        yield from chunk


def text(value) -> str:
    """A text feature as str (real TFDS records hold bytes; mocked ones hold str)."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
