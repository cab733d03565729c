"""`setting()`: a dataclass field that carries its help text, so a config class can drive a CLI.

    @dataclass
    class PursuitSettings:
        max_rounds: int = setting(5, help="Most pursuit rounds.")

The CLI (cli/options.py) turns every such field into a `--max-rounds` option
with that help and default; the default lives in the dataclass only.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, field


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
