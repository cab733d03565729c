"""Atomic writes: what is on disk is either the old artefact or the new one."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import BakingError


def write_json(path: str | os.PathLike, data) -> None:
    """Write JSON through a temp file in the same folder, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | os.PathLike, rows) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise BakingError(f"{path}:{line_no}: not valid JSON ({e.msg}); fix or regenerate the file") from None
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
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
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
