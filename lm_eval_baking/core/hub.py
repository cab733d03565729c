"""The Hugging Face Hub id a model is known by, for a model card's `base_model`: never a local path.

A card's `base_model` must be a Hub repo id (the Hub links the adapter to it); a path on the machine
that baked it means nothing anywhere else, so where no id is genuinely known the card leaves it out.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..constants import DEFAULT_MODEL, DEFAULT_MODEL_HUB_ID, DEFAULT_MODEL_NAME

# A snapshot in the Hugging Face cache: .../models--ORG--NAME/snapshots/REVISION
_CACHED_SNAPSHOT = re.compile(r"^models--(.+)$")


def is_repo_id(name) -> bool:
    """A valid Hub model id ("org/name" or "name") that does not read like a path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(name, str) or not name or name.startswith((".", "/", "~")) or os.path.isabs(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def hub_model_id(requested: str | os.PathLike | None, resolved: str | os.PathLike | None = None) -> str | None:
    """The Hub id of a model given as `requested` (--model: "default", an id or a folder), loaded from `resolved`.

    The default model: its id. A Hub id that is no local folder: that id. A local folder: the id of the Hub
    cache snapshot it is, or its config's `_name_or_path` when that is an id; else None.
    """
    if requested is None or str(requested) == DEFAULT_MODEL:
        return DEFAULT_MODEL_HUB_ID
    folder = Path(resolved if resolved is not None else requested)
    if not folder.exists():
        return str(requested) if is_repo_id(str(requested)) else None
    folder = folder.resolve()
    from .models import cache_dir

    if folder == (cache_dir() / "models" / DEFAULT_MODEL_NAME).resolve():
        return DEFAULT_MODEL_HUB_ID
    if folder.parent.name == "snapshots" and (match := _CACHED_SNAPSHOT.match(folder.parent.parent.name)):
        name = match.group(1).replace("--", "/", 1)
        return name if is_repo_id(name) else None
    try:
        named = json.loads((folder / "config.json").read_text("utf-8")).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return named if is_repo_id(named) and not (folder / named).exists() and not Path(named).exists() else None
