"""sha256 of text and files: how records name the exact prompt, data and weights they came from."""

from __future__ import annotations

import hashlib
import os


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path: str | os.PathLike, *, missing: str | None = None) -> str:
    """The file's sha256; `missing` is returned for a file that cannot be read (when given)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    except OSError:
        if missing is None:
            raise
        return missing
    return digest.hexdigest()
