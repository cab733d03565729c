"""`setting()`: a dataclass field that carries its help text, so a config class can drive a CLI.

    @dataclass
    class PursuitSettings:
        max_rounds: int = setting(5, help="Most pursuit rounds.")

The CLI (cli/options.py) turns every such field into a `--max-rounds` option
with that help and default; the default lives in the dataclass only.
"""

from __future__ import annotations

from dataclasses import MISSING, field


def setting(default=MISSING, *, help: str, default_factory=MISSING, **cli):
    """A dataclass field with `metadata={"help": ..., **cli}`; `cli` may hold `choices`, `metavar`, `flag`."""
    metadata = {"help": help, **cli}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)
