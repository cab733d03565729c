"""Atomic writes: what is on disk is either the old artefact or the new one."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import BakingError


def write_json(path: str | os.PathLike, data) -> None:
    """Write JSON through a temp file in the same folder, then rename over `path`."""
    with _atomic_text(path) as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_jsonl(path: str | os.PathLike, rows) -> None:
    """Write one JSON object per line, atomically like `write_json`."""
    with _atomic_text(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


@contextmanager
def _atomic_text(path: str | os.PathLike) -> Iterator:
    """A text file to write that appears at `path` only once complete (a kill leaves the old one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the file should read like any other
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The rows of a JSONL file; anything unreadable is one BakingError naming the file and line."""
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")  # bytes: no newline translation; a BOM is fine
    except UnicodeDecodeError:
        raise BakingError(f"{path} is not UTF-8 text; fix or regenerate the file") from None
    except OSError as e:
        raise BakingError(f"cannot read {path} ({e.strerror or e}); check the path") from None
    rows = []
    # Lines end at \n, \r\n or \r. Not str.splitlines: that also cuts at U+2028 and U+0085,
    # which json.dumps(ensure_ascii=False) leaves unescaped inside strings.
    for line_no, line in enumerate(re.split(r"\r\n?|\n", text), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise BakingError(f"{path}:{line_no}: not valid JSON ({e.msg}); fix or regenerate the file") from None
        except RecursionError:
            raise BakingError(f"{path}:{line_no}: JSON nested too deeply; fix or regenerate the file") from None
    return rows


@contextmanager
def staged_directory(final: str | os.PathLike, *, replace: bool) -> Iterator[Path]:
    """Yield a scratch folder beside `final`; on success rename it to `final`.

    The scratch folder lives in the same parent so the rename is atomic. If the
    block raises, `final` is untouched and the scratch folder is removed. With
    `replace`, an existing `final` is swapped out only after the new one is
    complete.
    """
    final = Path(final).absolute()
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        # ".NAME.staging-*", not ".NAME.partial": that name is a resumable bake's work folder.
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.staging-", dir=final.parent))
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; the result should be as readable as a plain mkdir
    except OSError as e:
        raise BakingError(f"cannot write to {final.parent} ({e.strerror}); choose a writable --output") from None
    try:
        yield staging
        if final.exists() and any(final.iterdir()):
            if not replace:
                raise BakingError(f"{final} is not empty; pass --overwrite to replace it or choose another path")
            retired = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, retired / final.name)
            os.replace(staging, final)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, final)  # also replaces an empty folder
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
