"""What every JSON record of ours shares: a `format` name and a `format_version`, checked when it is read.

Each record has one owner (a dataclass with a save/load pair in its module); this is the check they
all run on load, so a file written by a newer lm-eval-baking is refused in one line instead of being
misread. Files written before a record had a version read as version 1.
"""

from __future__ import annotations

from ..errors import BakingError
from .text import quoted


def check_format_version(data: dict, known: int, where: str) -> int:
    """The record's format_version (1 when absent); a newer or malformed one is a BakingError."""
    version = data.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BakingError(f"{where} has format_version {quoted(version)}, not a whole number of 1 or more; "
                          "it is damaged: make it again")
    if version > known:
        raise BakingError(f"{where} is format version {version}, newer than this lm-eval-baking reads "
                          f"(up to {known}); upgrade lm-eval-baking")
    return version
