"""Reading JSON and JSONL files we or our users wrote, with one clear error per bad file."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import BakingError


def split_lines(text: str) -> list[str]:
    """Lines end at \\n, \\r\\n or \\r. Not str.splitlines: that also cuts at U+2028, U+0085, form
    feeds and other characters that a JSON string or a question may legitimately hold."""
    return re.split(r"\r\n?|\n", text)


def read_text(path: str | os.PathLike, what: str = "") -> str:
    """A UTF-8 file's text (a BOM is accepted); unreadable files are one BakingError."""
    what = f"{what} " if what else ""
    try:
        # Bytes, then decode: no newline translation; "utf-8-sig" accepts a leading BOM.
        return Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BakingError(f"{what}{path} is not UTF-8 text; save it as UTF-8") from None
    except OSError as e:
        raise BakingError(f"cannot read {what}{path} ({e.strerror or e}); check the path") from None


def parse_jsonl(text: str, where: str, fix: str = "fix or regenerate the file") -> list[tuple[int, object]]:
    """(line number, value) for each non-blank line of a JSONL text; a bad line is one BakingError naming it."""
    rows = []
    for line_no, line in enumerate(split_lines(text), 1):
        if not line.strip():
            continue
        try:
            rows.append((line_no, json.loads(line)))
        except json.JSONDecodeError as e:
            raise BakingError(f"{where}:{line_no}: not valid JSON ({e.msg}); {fix}") from None
        except RecursionError:
            raise BakingError(f"{where}:{line_no}: JSON nested too deeply; {fix}") from None
    return rows


def read_jsonl(path: str | os.PathLike) -> list:
    """The rows of a JSONL file; anything unreadable is one BakingError naming the file and line."""
    return [row for _, row in parse_jsonl(read_text(path), str(path))]


def read_json_object(path: str | os.PathLike) -> dict | None:
    """A JSON object from `path`, or None when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None
