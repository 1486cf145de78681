"""How robertax's commands report bad input: one line, "error: ...", and exit status 1, not a
traceback (a missing file, a config or text that does not fit). ROBERTAX_TRACEBACK=1 shows
the traceback instead. The exceptions keep their messages for callers of the library."""

from __future__ import annotations

import contextlib
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
