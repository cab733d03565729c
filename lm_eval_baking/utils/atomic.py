"""Atomic writes: what is on disk is either the old file or folder, or the whole new one.

Every writer in the package goes through here: a temp file (or folder) is
made in the same directory and renamed over the target only when complete,
so a kill, a full disk or an exception never leaves half a file behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator

from ..errors import BakingError


@contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """A temp path beside `path` to write (by any library); renamed to `path` when the block ends cleanly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; the file should read like any other
    try:
        yield Path(tmp)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """An open file (text 'w' as UTF-8, or 'wb') that appears at `path` only once complete."""
    with atomic_path(path) as tmp:
        encoding = None if "b" in mode else "utf-8"
        with open(tmp, mode, encoding=encoding) as f:
            yield f


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path, "wb") as f:
        f.write(data)


def write_json(path: str | os.PathLike, data) -> None:
    with atomic_file(path) as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_jsonl(path: str | os.PathLike, rows) -> None:
    """One JSON object per line."""
    with atomic_file(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


@contextmanager
def staged_directory(final: str | os.PathLike, *, replace: bool, seal: Callable[[Path], None] | None = None,
                     may_retire: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a scratch folder beside `final`; on success rename it to `final`.

    The scratch folder lives in the same parent so the rename is atomic. If the
    block raises, `final` is untouched and the scratch folder is removed. With
    `replace`, an existing non-empty `final` is swapped out only after the new
    one is complete. This layer cannot tell ours from a user's: `seal(staging)`
    runs once the block is done (artifacts/manifest.py writes the manifest
    there) and `may_retire(final)` before an existing `final` is swapped out
    (it raises to keep it); `artifacts.manifest.owned_directory` passes both.
    """
    final = Path(final).absolute()
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        # ".NAME.staging-*", not ".NAME.partial": that name is a resumable bake's work folder.
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.staging-", dir=final.parent))
        staging.chmod(0o777 & ~umask())  # mkdtemp makes 0700; the result should be as readable as a plain mkdir
    except OSError as e:
        raise BakingError(f"cannot write to {final.parent} ({e.strerror}); choose a writable --output") from None
    try:
        yield staging
        if seal is not None:
            seal(staging)
        if final.exists() and any(final.iterdir()):
            if not replace:
                raise BakingError(f"{final} is not empty; choose another path")
            if may_retire is not None:
                may_retire(final)
            retired = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, retired / final.name)
            os.replace(staging, final)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, final)  # also replaces an empty folder
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def make_readable(folder: Path) -> None:
    """Apply the umask to a folder made by mkdtemp (0700) and its files, for outputs meant to be shared."""
    mask = umask()
    os.chmod(folder, 0o777 & ~mask)
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
