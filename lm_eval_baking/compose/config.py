"""Settings of bakes built from bakes: when prompt pursuit stops and what scores its rounds.

Each field carries its help text, from which the CLI builds its options.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import BakingError
from ..utils.settings import setting
from ..utils.text import quoted


@dataclass
class PursuitSettings:
    """When pursuit stops. Serialised into pursuit.json."""

    max_rounds: int = setting(5, help="Most pursuit rounds (round 1 is the plain bake).")
    min_improvement: float = setting(0.01, help=(
        "Stop once a round improves the score by less than this fraction of the previous round's score "
        "(0.01 = 1%)."))
    evaluator: str = setting("default", help=(
        "What scores each round, higher is better: default (adherence for a built-in persona's prompt, else "
        "quality), quality (1 - KL/KL_unprompted to the original prompted base), adherence[:PERSONA], or an "
        "lm_eval TASK:METRIC."))

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if isinstance(self.max_rounds, bool) or not isinstance(self.max_rounds, int) or self.max_rounds < 1:
            raise BakingError(f"--max-rounds must be an integer ≥ 1 (got {quoted(self.max_rounds)})")
        if not (isinstance(self.min_improvement, (int, float)) and math.isfinite(self.min_improvement)
                and self.min_improvement >= 0):
            raise BakingError("--min-improvement must be a number ≥ 0, e.g. 0.01 for 1% "
                              f"(got {quoted(self.min_improvement)})")
