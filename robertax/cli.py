"""How robertax's commands report bad input: one line, "error: ...", and exit status 1, not a
traceback (a missing file, a config or text that does not fit). ROBERTAX_TRACEBACK=1 shows
the traceback instead. The exceptions keep their messages for callers of the library."""

from __future__ import annotations

import contextlib
import json
import os

BAD_INPUT = (OSError, ValueError, KeyError)


def error_line(e: BaseException) -> str:
    """"error: <message>" (a KeyError's message without the quotes its str() adds)."""
    return f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}"


@contextlib.contextmanager
def bad_input_exits(*more: type):
    """Inside, OSError, ValueError, KeyError (and `more`) end the command as `error_line`."""
    try:
        yield
    except BAD_INPUT + more as e:
        if os.environ.get("ROBERTAX_TRACEBACK"):
            raise
        raise SystemExit(error_line(e)) from None


def add_model_args(parser, model_help: str) -> None:
    """--model (required) and --tokenizer, as every inference command takes them."""
    parser.add_argument("--model", required=True, help=model_help)
    parser.add_argument("--tokenizer", default=None, help="a tokenizer dir or file (default: "
                        "the checkpoint's own)")


def read_lines(path: str, what: str = "one text a line") -> tuple[list[str], list[str]]:
    """(lines, "FILE:LINE" of each); an empty line is refused (FILE:LINE), not skipped."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            raise ValueError(f"{path}:{n}: empty line ({what})")
    return lines, [f"{path}:{n}" for n in range(1, len(lines) + 1)]


def texts_from(input_file: str | None, texts: list[str],
               what: str = "one text a line") -> tuple[list[str], list[str]]:
    """(texts, where each is: "FILE:LINE" or "text N") from --input or the command line (one
    of them, and at least one text)."""
    if bool(input_file) == bool(texts):
        raise ValueError("give texts on the command line or --input=FILE (one of them)")
    if input_file:
        lines, where = read_lines(input_file, what)
        if not lines:
            raise ValueError(f"{input_file}: no texts")
        return lines, where
    return list(texts), [f"text {n}" for n in range(1, len(texts) + 1)]


def write_jsonl(path: str, rows) -> None:
    """One JSON object a line."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def some(names, limit: int = 10) -> str:
    """The first `limit` names, comma-separated, with ", ..." when there are more."""
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
