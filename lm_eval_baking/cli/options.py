"""Options built from config dataclasses, so a default and its help text live in one place.

`add_settings(parser, BakeConfig)` adds one `--flag` per field (`utils.settings.setting`),
named after the field, with its help and default; `settings_from_args` builds the
dataclass back from the parsed arguments.
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path

from ..errors import BakingError
from ..utils.text import quoted


def add_settings(parser: argparse.ArgumentParser, cls, *, exclude: tuple[str, ...] = (),
                 title: str | None = None, dest_prefix: str = "") -> None:
    """One option per field of the dataclass `cls` (fields marked cli=False and `exclude` are left out).

    A field's metadata (`utils.settings.setting`) may also say: `positional=True` (an argument, not a flag;
    a list field takes one or more), `repeat=True` (a list flag given once per item), `short="-o"`, `flag`
    (the option's name when it is not the field's), `choices`, `metavar`, `nested=True` (the field is a
    dataclass whose own fields are options, named by their `flag`s: BakeConfig.multi_turn). A field without
    a default is a required option. Numbers and paths given on the command line are checked here, so a bad
    one is one line.
    """
    group = parser.add_argument_group(title) if title else parser
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in exclude or f.metadata.get("cli", True) is False:
            continue
        if f.metadata.get("nested"):
            add_settings(group, _bare(hints[f.name]), dest_prefix=f"{dest_prefix}{f.name}.")
            continue
        required = f.default is MISSING and f.default_factory is MISSING
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else None)
        help_text = f.metadata.get("help", "")
        kind, optional = _kind(hints[f.name])
        flag = "--" + f.metadata.get("flag", f.name).replace("_", "-")
        item_hints = typing.get_args(_bare(hints[f.name])) if kind in (list, tuple) else ()
        item = _kind(item_hints[0])[0] if item_hints else (str if kind in (list, tuple) else kind)
        options = {"help": _with_default(help_text, None if required else default)}
        if f.metadata.get("metavar"):
            options["metavar"] = f.metadata["metavar"]
        elif dest_prefix and kind is not bool and not f.metadata.get("choices"):
            options["metavar"] = f.name.upper()  # not argparse's MULTI_TURN.NAME, from the dest
        if f.metadata.get("choices"):
            options["choices"] = list(f.metadata["choices"])
        if f.metadata.get("positional"):
            group.add_argument(f.name, type=_typed(item, f.metadata.get("metavar", f.name)),
                               **({"nargs": "+"} if kind in (list, tuple) else {}), **options)
            continue
        options.update(dest=dest_prefix + f.name, default=default)
        names = [flag] + ([f.metadata["short"]] if f.metadata.get("short") else [])
        if required:
            options["required"] = True
        if kind is bool:
            group.add_argument(*names, action=argparse.BooleanOptionalAction, **options)
        elif kind in (list, tuple):
            repeat = {"action": "append"} if f.metadata.get("repeat") else {"nargs": "+"}
            group.add_argument(*names, type=_typed(item, flag), **repeat, **options)
        else:
            group.add_argument(*names, type=_typed(kind, flag), **options)


def _typed(kind, flag: str):
    """The argparse type of an option: numbers and paths refused as one `BakingError` line, not a usage text."""
    if kind is Path:
        return output_path if flag == "--output" else Path
    if kind not in (int, float):
        return kind

    def number(text: str):
        try:
            return kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a finite number"
            raise BakingError(f"{flag} needs {what}, got {quoted(text)}") from None

    return number


def _bare(hint):
    """`hint` without its `| None`."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def refuse_renamed(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """`old`, a flag an earlier version had, refused with one line naming `new` (scripts may still pass it).
    Hidden from --help; it also keeps argparse from reading `old` as an abbreviation of a longer flag."""

    class Renamed(argparse.Action):
        def __call__(self, *_):
            raise BakingError(f"{old} was renamed {new}; pass {new} instead")

    parser.add_argument(old, action=Renamed, nargs="?", help=argparse.SUPPRESS)


def output_path(text: str) -> Path:
    """The type of every command's --output: a path, never empty text, which Path() would quietly turn into '.',
    the folder the user is in. Raised as a BakingError (main() prints it as its one line), not argparse's usage."""
    if not text.strip():
        raise BakingError(f"--output {text!r} is empty; pass the folder to write, e.g. --output adapters/pirate")
    return Path(text)


def settings_from_args(cls, args: argparse.Namespace, dest_prefix: str = "", **fixed):
    """The dataclass `cls` from parsed arguments: every field the parser has, plus `fixed` values (a nested
    field, see `add_settings`, from its own fields' options)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        if f.name in fixed:
            continue
        if f.metadata.get("nested"):
            nested = f"{dest_prefix}{f.name}."
            if any(name.startswith(nested) for name in vars(args)):
                values[f.name] = settings_from_args(_bare(hints[f.name]), args, nested)
        elif hasattr(args, dest_prefix + f.name):
            values[f.name] = getattr(args, dest_prefix + f.name)
    return cls(**values, **fixed)


def _kind(hint) -> tuple[type, bool]:
    """(the type an option's value converts to, whether None is allowed) for a field's annotation."""
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(members) < len(typing.get_args(hint))
        hint = members[0]
    origin = typing.get_origin(hint) or hint
    if origin in (list, tuple):
        return origin, optional
    if origin is Path or (isinstance(origin, type) and issubclass(origin, Path)):
        return Path, optional
    return origin, optional


def _with_default(help_text: str, default) -> str:
    if default is None or default == [] or default == ():
        return help_text.replace("%", "%%")
    shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
    return f"{help_text} (default: {shown})".replace("%", "%%")


def quiet_libraries() -> None:
    """Keep the terminal for our own progress bars and summary, not library chatter (loads transformers)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
