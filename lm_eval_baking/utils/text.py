"""Values from files, made safe for a one-line error message or a table cell."""

from __future__ import annotations

import json
from pathlib import Path


def quoted(value, width: int | None = 60) -> str:
    """`value` on one line: printable strings as they are, anything else as JSON; long ones cut with '…'.

    Every name or value that comes from a user's file goes through here before it
    enters an error message, so a newline in a file can never split the line.
    """
    if isinstance(value, str) and value.isprintable():
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            text = repr(value)
        if not text.isprintable():
            text = json.dumps(text)[1:-1]  # escape what is still not printable (lone surrogates, controls)
    return text if width is None or len(text) <= width else text[:width - 1] + "…"


def first_line(error: BaseException, width: int = 160) -> str:
    """An exception's first line (or its type's name), for "cannot X (REASON)" messages."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return quoted(line, width)


def listed(names, width: int | None = None) -> str:
    """Names from files (labels, tasks, paths), comma-separated on one line (each cut to `width` if given)."""
    return ", ".join(quoted(name, width) for name in names)


def model_label(adapter: str | None) -> str:
    """A short name for a compared model: "base" for the base model (None), else the adapter folder's name."""
    return "base" if adapter is None else Path(adapter).name or str(adapter)
