"""Versions of this package and the libraries that decide the bits of a bake, for records."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    try:
        return version("lm-eval-baking")
    except PackageNotFoundError:
        return "source"


def library_versions() -> dict[str, str | None]:
    """torch, transformers, peft, lm_eval and Python: what a rerun needs to reproduce a record's numbers."""
    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"torch": installed("torch"), "transformers": installed("transformers"), "peft": installed("peft"),
            "lm_eval": installed("lm_eval"), "python": platform.python_version(), "lm_eval_baking": package_version()}
