"""The base-model store: results of the base model (no adapter), stamped, shared by every run with the same key.

The base model's per-doc scores on a task depend only on the model, the task, its data and the settings, not
on the adapters they are compared with. So `forgetting`, `cross-task` and the pipeline keep them here, one entry
per result, and reuse an entry instead of scoring the base model again:

    <cache>/lm_eval_base/KEY/     ($LM_EVAL_BAKING_BASE_STORE/KEY/ when that is set)
        base_result.json          BaseResultRecord: the key, everything it was hashed from, every file's sha256
        ...                       the result itself (scores.json, or run/ for an lm_eval CLI run)

KEY is the sha256 of `inputs` (canonical JSON): the callers (workflows/base_reuse.py) put into it everything the
result depends on, so any difference is another key. An entry is written through a staging folder that is
renamed into place whole, and is used only when its record reads and names the same key and inputs, and every
file it lists has its sha256: a damaged or half-written entry is never used (and the next write replaces it).
A store that cannot be written costs the reuse, never the run: one warning line.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Callable

from ..constants import BASE_RESULT_RECORD, BASE_STORE_DIR, BASE_STORE_ENV, MANIFEST
from ..core.models import cache_dir
from ..errors import BakingError
from ..utils.atomic import staged_directory
from ..utils.hashing import sha256_file
from ..utils.text import first_line
from .records import BaseResultRecord


def store_dir() -> Path:
    """$LM_EVAL_BAKING_BASE_STORE, else `<cache>/lm_eval_base` (core.models.cache_dir)."""
    return Path(os.environ.get(BASE_STORE_ENV) or cache_dir() / BASE_STORE_DIR)


def canonical(inputs: dict) -> dict:
    """`inputs` as JSON reads it back (tuples as lists...), so a stored record compares equal."""
    return json.loads(json.dumps(inputs, sort_keys=True, ensure_ascii=False))


def key_of(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(canonical(inputs), sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def find(inputs: dict) -> Path | None:
    """The verified entry for `inputs`, or None (none yet, damaged, half-written, another key's)."""
    key = key_of(inputs)
    entry = store_dir() / key
    record = BaseResultRecord.from_pretrained_or_none(entry)
    if record is None or record.key != key or record.inputs != canonical(inputs) or not isinstance(record.files, dict):
        return None
    if not record.files or set(record.files) != set(_files(entry)):
        return None
    for name, digest in record.files.items():
        if sha256_file(entry / name, missing="missing") != digest:
            return None
    return entry


def put(inputs: dict, what: str, fill: Callable[[Path], None]) -> Path | None:
    """Store a new entry for `inputs`: `fill(folder)` writes the result into a staging folder, which becomes the
    entry once its record is written. A store that cannot be written prints one warning line and gives None."""
    key = key_of(inputs)
    entry = store_dir() / key
    try:
        with staged_directory(entry, replace=True) as staging:
            fill(staging)
            files = {name: sha256_file(staging / name) for name in _files(staging)}
            BaseResultRecord(key=key, what=what, inputs=canonical(inputs), files=files).save_pretrained(staging)
    except (OSError, BakingError) as e:
        reason = first_line(e, 120).split(";")[0]  # a BakingError's fix is for --output, not for the store
        warn(f"cannot write the base-model store at {store_dir()} ({reason}); this run goes on "
             f"without storing its base-model result (set {BASE_STORE_ENV} to a writable folder, or pass "
             "--no-reuse-base)")
        return None
    return entry


def warn(message: str) -> None:
    """One line on stderr, once per process: a store that cannot be written is said once, not once per task."""
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"lm-eval-baking: warning: {message}", file=sys.stderr, flush=True)


_WARNED: set[str] = set()


def _files(folder: Path) -> list[str]:
    """Every file of an entry, by its path inside it, but the record and the manifest."""
    names = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir())
    return sorted(name for name in names if name not in (BASE_RESULT_RECORD, MANIFEST))
