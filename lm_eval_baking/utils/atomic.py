"""Atomic writes: what is on disk is either the old file or folder, or the whole new one.

Every writer in the package goes through here: a temp file (or folder) is
made in the same directory and renamed over the target only when complete,
so a kill, a full disk or an exception never leaves half a file behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator

from ..errors import BakingError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


@contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """A temp path beside `path` to write (by any library); renamed to `path` when the block ends cleanly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes 0600, and so do libraries that write through a temp file of their own (safetensors):
        # the file should read like any other the user writes.
        os.chmod(tmp, 0o666 & ~umask())
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
    Staging folders of `final` left by a killed run are removed first
    (`remove_stale_staging`); the one in use is locked so no other run removes it.
    """
    final = Path(final).absolute()
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(final)
        staging, held = _held_mkdtemp(_STAGING.format(name=final.name), final.parent)
        staging.chmod(0o777 & ~umask())  # mkdtemp makes 0700; the result should be as readable as a plain mkdir
    except OSError as e:
        raise BakingError(f"cannot write to {final.parent} ({e.strerror}); choose a writable --output") from None
    try:
        yield staging
        make_readable(staging)  # what libraries wrote in it with 0600 (safetensors) too
        if seal is not None:
            seal(staging)
        if final.exists() and any(final.iterdir()):
            if not replace:
                raise BakingError(f"{final} is not empty; choose another path")
            if may_retire is not None:
                may_retire(final)
            retired, retired_held = _held_mkdtemp(_RETIRED.format(name=final.name), final.parent)
            try:
                os.replace(final, retired / final.name)
                os.replace(staging, final)
                shutil.rmtree(retired, ignore_errors=True)
            finally:
                _release(retired_held)
        else:
            os.replace(staging, final)  # also replaces an empty folder
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        _release(held)


# ".NAME.staging-*", not ".NAME.partial": that name is a resumable bake's work folder. ".NAME.old-*" holds the
# replaced `final` for the moment between the two renames.
_STAGING, _RETIRED = ".{name}.staging-", ".{name}.old-"
_MKDTEMP_SUFFIX = r"[a-z0-9_]{8}"  # what tempfile.mkdtemp adds to the prefix


def remove_stale_staging(final: str | os.PathLike) -> None:
    """Remove the staging and retired folders of `final` that a killed run left behind.

    A folder is stale when no live process holds its lock (`_held_mkdtemp`): a kill
    releases it, so a concurrent run's folder is never touched. A retired folder
    whose run died between its two renames holds the only complete `final`: that is
    put back. Symlinks and other names are never followed or removed.
    """
    final = Path(final).absolute()
    if fcntl is None:
        return  # no flock (Windows): a live run's folder cannot be told from a dead one's, so keep them all
    prefixes = "|".join(re.escape(p.format(name=final.name)) for p in (_STAGING, _RETIRED))
    stale = re.compile(f"(?:{prefixes}){_MKDTEMP_SUFFIX}")
    try:
        names = sorted(entry.name for entry in os.scandir(final.parent) if stale.fullmatch(entry.name))
    except OSError:
        return  # best effort: the write that follows reports an unusable folder in its own words
    for name in names:
        folder = final.parent / name
        held = _try_hold(folder)
        if held is None:
            continue  # in use by a live run, or not a plain folder
        try:
            previous = folder / final.name
            if name.startswith(_RETIRED.format(name=final.name)) and previous.is_dir() and not final.exists():
                try:
                    os.replace(previous, final)
                except OSError:
                    continue  # the only complete copy: keep it where it is rather than lose it
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            _release(held)


def _held_mkdtemp(prefix: str, parent: Path) -> tuple[Path, int | None]:
    """A new folder (mkdtemp) and an fd holding an exclusive flock on it, kept while the folder is in use.

    The lock is what tells `remove_stale_staging` that a live process owns the folder;
    the kernel drops it when the process dies, even by SIGKILL.
    """
    while True:
        folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        if fcntl is None:
            return folder, None
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except FileNotFoundError:
            continue  # another run's cleanup took it between mkdtemp and open: make another
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits only while a cleanup that found it first holds it
        except OSError:
            return folder, fd  # a filesystem without flock: no cleanup can lock it either, so none removes it
        if _same_folder(fd, folder):
            return folder, fd
        os.close(fd)  # that cleanup removed it: make another


def _try_hold(folder: Path) -> int | None:
    """An fd holding the flock on `folder` if no live process holds it and it is a real folder, else None."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None  # gone, a symlink or not a folder
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: a live run holds it; anything else: cannot tell, so keep it
        os.close(fd)
        return None
    if not _same_folder(fd, folder):
        os.close(fd)
        return None
    return fd


def _same_folder(fd: int, folder: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(folder, follow_symlinks=False))
    except FileNotFoundError:
        return False


def _release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the last fd drops the flock


def make_readable(folder: Path) -> None:
    """Give a folder made by mkdtemp (0700) and everything in it the modes a plain write would: 0644 files and
    0755 folders (and executables) under umask 022. Symlinks are left alone, and never followed."""
    mask = umask()
    os.chmod(folder, 0o777 & ~mask)
    for parent, folders, files in os.walk(folder):  # never into a symlinked folder
        for name in folders + files:
            path = os.path.join(parent, name)
            mode = os.lstat(path).st_mode
            if not stat.S_ISLNK(mode):
                executable = stat.S_ISDIR(mode) or stat.S_IMODE(mode) & 0o111
                try:
                    os.chmod(path, (0o777 if executable else 0o666) & ~mask)
                except OSError:
                    pass  # a filesystem without modes (vfat): the output matters more than its modes


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
