"""`setting()`: a dataclass field that carries its help text, so a config class can drive a CLI.

    @dataclass
    class PursuitSettings:
        max_rounds: int = setting(5, help="Most pursuit rounds.")

The CLI (cli/options.py) turns every such field into a `--max-rounds` option
with that help and default; the default lives in the dataclass only.
"""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
from dataclasses import MISSING, field, fields, is_dataclass
from pathlib import Path

from ..errors import BakingError
from .text import listed, quoted


def setting(default=MISSING, *, help: str, default_factory=MISSING, **cli):
    """A dataclass field with `metadata={"help": ..., **cli}`; `cli` may hold `choices`, `metavar`, `flag`."""
    metadata = {"help": help, **cli}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# Above this a sampling temperature draws about uniformly from the vocabulary: no setting anyone means.
MAX_TEMPERATURE = 100.0


def in_range(value, *, low=None, high=None, above=None, below=None) -> bool:
    """Whether `value` is a finite real number (not a bool) with low <= value <= high and above < value < below;
    a bound left None is not checked.

    The one test of every float setting: `value > 0` alone lets inf through (and `not value < 0` lets nan
    through), and such a number then fails deep inside a bake, after the sampling, or as a traceback.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return ((low is None or value >= low) and (high is None or value <= high)
            and (above is None or value > above) and (below is None or value < below))


# ---------------------------------------------------------------------------- settings from a file


def from_mapping(cls, data, where: str | None = None, *, what: str = "recipe"):
    """A `cls` dataclass from a mapping read from a file (YAML, JSON), with one-line errors naming the key.

    Every key must be a field of `cls` (a field with metadata `flatten=True` takes its own fields from the
    same mapping), every value of its field's type (a nested dataclass is read the same way), a field
    without a default must be there; then `cls`'s own checks (`__post_init__`) run, and their message is
    put after the key. `where` is the mapping's own key ('stages[1].pursuit'; None: the whole file),
    `what` the kind of file ('recipe'). The defaults stay the dataclass's: nothing here repeats one.
    """
    label = f"{what} key '{where}'" if where else f"the {what}"
    if not isinstance(data, dict):
        raise BakingError(f"{label} must be a mapping of settings, not {quoted(data, 40)}")
    refuse_unknown_keys(data, mapping_keys(cls), label)
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        if not f.init:
            continue
        if f.metadata.get("flatten"):
            values[f.name] = from_mapping(hints[f.name], {k: v for k, v in data.items()
                                                          if k in mapping_keys(hints[f.name])}, where, what=what)
            continue
        key = f"{where}.{f.name}" if where else f.name
        if f.name in data:
            values[f.name] = _read(data[f.name], hints[f.name], key, what)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise BakingError(f"{what} key '{key}' is missing; add it: {f.metadata.get('help', f.name)}")
    try:
        return cls(**values)
    except BakingError as e:
        if where is None:
            raise
        message = str(e)
        for f in fields(cls):  # the class's checks name command-line flags: in a file, its keys
            flag = "--" + f.metadata.get("flag", f.name).replace("_", "-")
            message = re.sub(re.escape(flag) + r"(?![\w-])", f.name, message)
        raise BakingError(f"{label}: {message}") from None


def mapping_keys(cls) -> set[str]:
    """The keys `from_mapping` reads for `cls` (a flattened field's own keys instead of its name)."""
    hints = typing.get_type_hints(cls)
    keys = set()
    for f in fields(cls):
        if f.init:
            keys |= mapping_keys(hints[f.name]) if f.metadata.get("flatten") else {f.name}
    return keys


def refuse_unknown_keys(data: dict, allowed: set[str], label: str) -> None:
    """A BakingError naming the first key of `data` not in `allowed`, and the nearest allowed one."""
    unknown = sorted(str(k) for k in data if k not in allowed)
    if not unknown:
        return
    near = difflib.get_close_matches(unknown[0], sorted(allowed), n=1, cutoff=0.6)
    hint = f"did you mean {near[0]}? (settings: {listed(sorted(allowed))})" if near else \
        f"use one of {listed(sorted(allowed))}"
    raise BakingError(f"{label} has unknown setting {quoted(unknown[0])}; {hint}")


def _read(value, hint, key: str, what: str):
    """`value` as the type `hint` names, or a one-line BakingError naming `key`."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(members) < len(typing.get_args(hint)):
            return None
        hint = members[0]
    origin = typing.get_origin(hint) or hint
    if is_dataclass(origin):
        return from_mapping(origin, value, key, what=what)
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str),
          Path: lambda v: isinstance(v, str) and bool(v.strip()),
          list: lambda v: isinstance(v, list), tuple: lambda v: isinstance(v, list),
          dict: lambda v: isinstance(v, dict)}.get(origin, lambda v: True)
    if not ok(value):
        raise BakingError(f"{what} key '{key}' must be {_described(origin)}, not {quoted(value, 40)}")
    if origin in (list, tuple):
        items = typing.get_args(hint)[:1] or (object,)
        read = [_read(v, items[0], f"{key}[{i}]", what) for i, v in enumerate(value)]
        return tuple(read) if origin is tuple else read
    if origin is float:
        return float(value)
    return Path(value) if origin is Path else value


def _described(kind) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number", str: "text", Path: "a path",
            list: "a list", tuple: "a list", dict: "a mapping"}.get(kind, getattr(kind, "__name__", str(kind)))
