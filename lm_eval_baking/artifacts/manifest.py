"""Ownership by manifest: a folder is ours only when it says so, and only what it lists is ours in it.

Every folder lm-eval-baking writes holds `MANIFEST` (constants.py):

    {"tool": "lm-eval-baking", "format": "lm-eval-baking/manifest", "format_version": 1, "kind": "bake",
     "entries": {"adapter_config.json": {"size": 812, "sha256": "..."},
                 "adapter_model.safetensors": {"size": 1843200}, "data/train.jsonl": {...}, ...}}

`entries` names every file the tool wrote there, by its path inside the folder. Files up to
MANIFEST_HASH_LIMIT carry their sha256; bigger ones (adapter weights, checkpoints) only their size:
hashing gigabytes on every write and every check would cost minutes, and the hash is there to notice a
user who edited one of our files (a model card, a record), which size and name alone would miss for
small text but never for weights nobody edits by hand.

The rules (artifacts/outputs.check_output and `owned_directory` enforce them):
- a folder without a valid manifest is never ours, whatever its file names;
- in a folder of ours, anything the manifest does not list (or a listed file whose size or hash
  changed) is the user's, and the folder is not replaced while it is there;
- a subfolder holding its own valid manifest (a pursuit's round-1 bake, a pipeline's lm_eval runs) is
  judged by that manifest; a subfolder without one (pursuit/references/) is ours when everything in it
  is; folders with no file at all hold nothing to lose;
- the hidden work of a run in progress (`.NAME.partial` with its state, `.NAME.staging-*`,
  `.NAME.old-*`, `.NAME.*.tmp`) is ours: utils/atomic.py and training/workdir.py name them so.

Folders written before manifests existed have none, so they are refused like any other folder of the
user's; the refusal says so when the folder holds one of our record files (LEGACY_RECORDS).
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

from ..constants import (
    LEGACY_RECORDS, MANIFEST, MANIFEST_FORMAT, MANIFEST_FORMAT_VERSION, MANIFEST_HASH_LIMIT, MANIFEST_TOOL,
    PARTIAL_SUFFIX, WORK_FORMAT, WORK_STATE,
)
from ..errors import BakingError
from ..utils.atomic import staged_directory, write_bytes, write_json
from ..utils.hashing import sha256_file
from ..utils.text import listed

# The hidden names utils/atomic.py gives its temp files and folders (mkstemp/mkdtemp: 8 random characters).
_TRANSIENT = re.compile(r"^\..+\.((staging|old)-[A-Za-z0-9_]{8}|[A-Za-z0-9_]{8}\.tmp)$")
_SHOWN = 3  # names shown in a refusal; the rest are counted


@dataclass
class Manifest:
    kind: str
    entries: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"tool": MANIFEST_TOOL, "format": MANIFEST_FORMAT, "format_version": MANIFEST_FORMAT_VERSION,
                "kind": self.kind, "entries": dict(sorted(self.entries.items()))}


def read_manifest(folder: str | os.PathLike) -> Manifest | None:
    """The folder's manifest, or None when it has none or one that is not valid (then the folder is not ours)."""
    path = Path(folder) / MANIFEST
    if path.is_symlink() or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("tool") != MANIFEST_TOOL or data.get("format") != MANIFEST_FORMAT:
        return None
    version, kind, entries = data.get("format_version"), data.get("kind"), data.get("entries")
    if (not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= MANIFEST_FORMAT_VERSION
            or not isinstance(kind, str) or not kind or not isinstance(entries, dict)):
        return None
    if not all(_safe_relative(name) and isinstance(info, dict) for name, info in entries.items()):
        return None
    return Manifest(kind, dict(entries))


def write_manifest(folder: str | os.PathLike, manifest: Manifest) -> None:
    write_json(Path(folder) / MANIFEST, manifest.to_dict())


def seal(folder: str | os.PathLike, kind: str) -> None:
    """Write the manifest of a folder whose every file we just wrote (a staging folder before its rename)."""
    folder = Path(folder)
    entries = {path.relative_to(folder).as_posix(): describe_file(path)
               for path in sorted(folder.rglob("*")) if not path.is_dir() and path != folder / MANIFEST}
    write_manifest(folder, Manifest(kind, entries))


def describe_file(path: Path) -> dict:
    size = path.stat().st_size
    return {"size": size, "sha256": sha256_file(path)} if size <= MANIFEST_HASH_LIMIT else {"size": size}


def claim(folder: str | os.PathLike, kind: str | None, names, *, pending: bool = False) -> None:
    """Add `names` (paths inside `folder`) to its manifest, made with `kind` when it has none yet.

    `pending` lists them before they are written, without size or hash, so a kill between the write and
    the second claim leaves a file we still recognise. `kind=None` only records in a manifest that exists
    (drift data written into a bake that may be the user's).
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        if kind is None:
            return
        manifest = Manifest(kind)
    for name in names:
        path = folder / name
        manifest.entries[PurePosixPath(name).as_posix()] = (
            {"pending": True} if pending or not path.is_file() else describe_file(path))
    write_manifest(folder, manifest)


@contextmanager
def owned_file(folder: str | os.PathLike, kind: str | None, name: str) -> Iterator[Path]:
    """The path `folder/name` to write (atomically, by the caller); listed in the folder's manifest around it."""
    claim(folder, kind, [name], pending=True)
    yield Path(folder) / name
    claim(folder, kind, [name])


def write_owned_json(folder: str | os.PathLike, kind: str, name: str, data) -> None:
    """`utils.atomic.write_json` of a record into a folder of ours (a pursuit's pursuit.json...), listed."""
    with owned_file(folder, kind, name) as path:
        write_json(path, data)


def write_owned_bytes(folder: str | os.PathLike, kind: str, name: str, data: bytes) -> None:
    with owned_file(folder, kind, name) as path:
        write_bytes(path, data)


@contextmanager
def owned_directory(final: str | os.PathLike, kind: str) -> Iterator[Path]:
    """`utils.atomic.staged_directory` for an output of ours: the finished folder gets its manifest, and an
    existing `final` is replaced only when it is ours with nothing of the user's in it (checked again at the
    rename, since a long run gives the user time to add files)."""
    with staged_directory(final, replace=True, seal=lambda staging: seal(staging, kind),
                          may_retire=lambda old: check_replaceable(old, str(old), what=kind)) as staging:
        yield staging


# ---------------------------------------------------------------------------- judging a folder

def foreign_entries(folder: str | os.PathLike, manifest: Manifest | None = None) -> list[str]:
    """What in `folder` lm-eval-baking did not write (or changed since), as paths inside it; [] when all is ours.

    A folder of the user's is named once ("chapters/"), not file by file.
    """
    folder = Path(folder)
    manifest = manifest if manifest is not None else read_manifest(folder)
    if manifest is None:
        return sorted(p.name + ("/" if p.is_dir() and not p.is_symlink() else "") for p in folder.iterdir())
    found: list[str] = []
    _walk(folder, folder, manifest.entries, found)
    return found


def _walk(root: Path, directory: Path, entries: dict[str, dict], found: list[str]) -> None:
    for child in sorted(directory.iterdir()):
        rel = child.relative_to(root).as_posix()
        if directory == root and child.name == MANIFEST:
            continue
        if child.is_symlink():
            found.append(rel)  # we never write links; deleting one would lose what the user made
        elif child.is_dir():
            nested = read_manifest(child)
            if nested is not None:
                found += [f"{rel}/{name}" for name in foreign_entries(child, nested)]
            elif _is_work_in_progress(child):
                continue
            elif any(name.startswith(rel + "/") for name in entries):
                _walk(root, child, entries, found)
            elif _holds_files(child):
                found.append(rel + "/")
        elif rel in entries:
            if not _unchanged(child, entries[rel]):
                found.append(f"{rel} (changed since lm-eval-baking wrote it)")
        elif not _TRANSIENT.match(child.name):
            found.append(rel)


def _is_work_in_progress(folder: Path) -> bool:
    if _TRANSIENT.match(folder.name):
        return True
    if not (folder.name.startswith(".") and folder.name.endswith(PARTIAL_SUFFIX)):
        return False
    try:  # a bake's work folder is known by its state (training/workdir.py), not by its name alone
        state = json.loads((folder / WORK_STATE).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(state, dict) and state.get("format") == WORK_FORMAT


def _holds_files(folder: Path) -> bool:
    return any(not p.is_dir() or p.is_symlink() for p in folder.rglob("*"))


def _unchanged(path: Path, info: dict) -> bool:
    if info.get("pending"):
        return True
    try:
        if "size" in info and path.stat().st_size != info["size"]:
            return False
        return "sha256" not in info or sha256_file(path) == info["sha256"]
    except OSError:
        return False


def _safe_relative(name) -> bool:
    if not isinstance(name, str) or not name:
        return False
    path = PurePosixPath(name)
    return not path.is_absolute() and ".." not in path.parts and "\\" not in name


# ---------------------------------------------------------------------------- refusals

def check_replaceable(folder: Path, label: str, *, what: str) -> Manifest:
    """The manifest of `folder` when everything in it is ours; else the one-line refusal (never suggesting
    --overwrite, which would not help)."""
    manifest = read_manifest(folder)
    if manifest is None:
        raise not_ours(folder, label, what=what)
    foreign = foreign_entries(folder, manifest)
    if foreign:
        raise BakingError(f"{label} holds files lm-eval-baking did not write ({_names(foreign)}); move them out "
                          f"or choose a new or empty folder for the {what}")
    return manifest


def not_ours(folder: Path, label: str, *, what: str) -> BakingError:
    names = foreign_entries(folder, None)
    if any((folder / record).is_file() for record in LEGACY_RECORDS):
        return BakingError(f"{label} has no lm-eval-baking manifest, so nothing in it is replaced (it holds "
                           f"{_names(names)}); an output of lm-eval-baking from before manifests has none: delete "
                           f"it yourself if it is one, or choose a new or empty folder for the {what}")
    return BakingError(f"{label} is a folder lm-eval-baking did not make (it holds {_names(names)}); choose a new "
                       f"or empty folder for the {what}")


def _names(names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return listed(names[:_SHOWN], 60) + more
