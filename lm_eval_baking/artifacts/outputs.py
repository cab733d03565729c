"""Which folders a command may replace: only what lm-eval-baking made, and in it only what it wrote.

Ownership is the folder's manifest (artifacts/manifest.py), never a file name:
`--overwrite` replaces a folder only when it holds a valid manifest and nothing
the manifest does not list. A folder without one is the user's: it is never
replaced or deleted, and no message suggests --overwrite for it. An output
is also never one of the command's inputs (`check_apart`), checked before any work.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import BakingError
from .manifest import check_replaceable, not_ours, read_manifest


def made_by_us(folder: Path) -> str | None:
    """The kind of lm-eval-baking output `folder` holds ('bake', 'pursuit', ...) by its manifest, or None."""
    manifest = read_manifest(folder)
    return manifest.kind if manifest is not None else None


def check_output(output: str | Path, *, overwrite: bool, what: str, same_run=None) -> str | None:
    """Refuse to write `what` to `output` unless it is new, empty, or ours with nothing of the user's in it.

    `same_run(folder)` may say that the folder holds this very run (to be reused
    or continued, which deletes nothing), which needs no --overwrite. Returns the
    kind of output the folder holds (None when new or empty).
    """
    output = Path(output)
    label = f"--output {output}"
    if output.exists() and not output.is_dir():
        raise BakingError(f"{label} is a file; choose a directory path")
    if not output.is_dir() or not any(output.iterdir()):
        return None
    manifest = read_manifest(output)
    if manifest is None:
        raise not_ours(output, label, what=what)
    if not overwrite and same_run is not None and same_run(output):
        return manifest.kind
    check_replaceable(output, label, what=what)
    if overwrite:
        return manifest.kind
    raise BakingError(f"{label} holds a different {manifest.kind} (made with other settings); choose another "
                      "--output or pass --overwrite to replace it")


def check_own_output(output: str | Path, *, kind: str) -> None:
    """For a command without --overwrite that replaces its own earlier output on a rerun (report, forgetting,
    cross-task): `output` must be new, empty, or a `kind` of ours holding nothing of the user's."""
    found = check_output(output, overwrite=True, what=kind)
    if found not in (None, kind):
        raise BakingError(f"--output {output} holds a {found}, not a {kind}; choose a new or empty folder for the "
                          f"{kind}")


def check_apart(output: str | Path, inputs, *, option: str = "--output") -> None:
    """An output is never an input: refuse `output` equal to, inside or holding any of `inputs` (paths that do
    not exist, or names like 'builtin', are skipped), before any work."""
    target = _resolved(output)
    for item in inputs:
        if item is None or not Path(item).exists():
            continue
        source = _resolved(item)
        if source == target:
            relation = "is"
        elif target in source.parents:
            relation = "holds"
        elif source in target.parents:
            relation = "is inside"
        else:
            continue
        raise BakingError(f"{option} {output} {relation} the input {item}; choose an {option} apart from every "
                          "input")


def _resolved(path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser())).resolve()


def writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` (and its parents) and check it can be written: a command that writes its results at the
    end calls this first, so a bad --output fails in seconds, not after an hour of evaluation."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BakingError(f"cannot create {path} ({e.strerror}); choose a writable --output") from None
    if not os.access(path, os.W_OK):
        raise BakingError(f"{path} is not writable; choose a writable --output")
    return path


def check_writable(output: str | os.PathLike) -> None:
    """Refuse an --output that cannot be written, before any work and without creating anything.

    A command that writes at the end (bake, pursue, sequence, pipeline, report) calls this first: it builds its
    result beside `output` (a work folder, a staging folder) and renames it into place, so the nearest folder
    that exists above `output` must be writable, and `output` itself when it exists (a read-only mount point).
    """
    output = Path(output).absolute()
    for folder in ([output] if output.is_dir() else []) + [p for p in output.parents if p.exists()][:1]:
        if not folder.is_dir():
            raise BakingError(f"--output {output} lies under {folder}, which is a file; choose a path in a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise BakingError(f"--output {output} cannot be written: {folder} is read-only (a read-only mount or "
                              "another user's folder); choose a writable --output")
