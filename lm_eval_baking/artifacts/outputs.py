"""Which folders a command may replace: only what lm-eval-baking made.

`--overwrite` replaces a bake, a pursuit, a sequence, a report, a forgetting
report or a demo output, each recognised by the record it holds. A folder
without such a record is the user's: it is never replaced or deleted, and no
message suggests --overwrite for it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..constants import OWN_RECORDS, PARTIAL_SUFFIX
from ..errors import BakingError
from ..utils.text import listed


def made_by_us(folder: Path) -> str | None:
    """What lm-eval-baking artefact `folder` holds ('bake', 'pursuit', ...), or None when it is not ours."""
    for record, kind in OWN_RECORDS.items():
        if (folder / record).is_file():
            return kind
    return None


def check_output(output: str | Path, *, overwrite: bool, what: str, same_run=None) -> None:
    """Refuse to write `what` to `output` unless it is new, empty, ours and replaceable.

    `same_run(folder)` may say that the folder holds this very run (to be reused
    or continued), which needs no --overwrite.
    """
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise BakingError(f"--output {output} is a file; choose a directory path")
    if not output.is_dir() or not any(output.iterdir()):
        return
    kind = made_by_us(output)
    if kind is None:
        shown = sorted(p.name for p in output.iterdir())
        more = f" and {len(shown) - 3} more" if len(shown) > 3 else ""
        raise BakingError(f"--output {output} is a folder lm-eval-baking did not make (it holds "
                          f"{listed(shown[:3], 40)}{more}); choose a new or empty folder for the {what}")
    if overwrite or (same_run is not None and same_run(output)):
        return
    raise BakingError(f"--output {output} holds a different {kind} (made with other settings); choose another "
                      "--output or pass --overwrite to replace it")


def is_work_folder(folder: Path) -> bool:
    return folder.name.startswith(".") and folder.name.endswith(PARTIAL_SUFFIX)


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
