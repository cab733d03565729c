"""`CompareSettings`: what `lm-eval-baking compare` judges and how (the CLI's options come from these fields).

Light on purpose (no evaluate, no torch): `compare --help` builds its options from this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..constants import DRIFT_TASK
from ..core.stats import CONFIDENCE, RESAMPLES
from ..core.verdicts import MAX_FORGETTING_DROP_PCT
from ..errors import BakingError
from ..utils.settings import in_range, setting
from ..utils.text import quoted

# Clusters known without being asked: the probes after one conversation of our persona-drift task share its
# history (conversation numbers restart for every persona, so the pair names one conversation).
DEFAULT_CLUSTERS = {DRIFT_TASK: ("persona", "conversation")}


@dataclass
class CompareSettings:
    max_drop: str = setting(
        f"{MAX_FORGETTING_DROP_PCT}%", metavar="DROP",
        help="largest allowed worsening of the candidate, absolute (0.02: two points of accuracy) or relative to "
             "the baseline (5%); which direction is worse comes from lm_eval's higher_is_better")
    cluster: list[str] = setting(
        default_factory=list, metavar="TASK=FIELD",
        help="docs of TASK whose doc field FIELD is equal are correlated and are resampled together (e.g. "
             "my_dialogues=dialogue_id; FIELD+FIELD joins fields); baking_persona_drift is clustered by "
             "persona+conversation without asking")
    json: Path | None = setting(None, metavar="FILE", help="also write every row and the verdict as JSON to FILE")
    inconclusive: str | None = setting(
        None, choices=("pass", "fail"),
        help="treat an inconclusive comparison as passing (exit 0) or failing (exit 1) instead of exit 3")
    confidence: float = setting(
        CONFIDENCE, help="family-wise confidence: each row's CI is at the Bonferroni level that keeps all rows' CIs "
                   "jointly at this one")
    resamples: int = setting(RESAMPLES, help="bootstrap resamples (and sign flips of the permutation tests) per row")
    seed: int = setting(0, help="seed of every resample; the same inputs and seed give the same table")

    def __post_init__(self):
        self.threshold, self.relative = parse_max_drop(self.max_drop)
        self.clusters = parse_clusters(self.cluster)
        if self.inconclusive not in (None, "pass", "fail"):
            raise BakingError(f"--inconclusive must be pass or fail, got {quoted(self.inconclusive)}")
        if not in_range(self.confidence, above=0.0, below=1.0):
            raise BakingError(f"--confidence must be between 0 and 1 (e.g. 0.95), got {quoted(self.confidence)}")
        if isinstance(self.resamples, bool) or not isinstance(self.resamples, int) or self.resamples < 100:
            raise BakingError(f"--resamples must be a whole number of at least 100, got {quoted(self.resamples)}")
        if self.json is not None and not str(self.json).strip():
            raise BakingError("--json is empty; pass the file to write, e.g. --json compare.json")


def parse_max_drop(text) -> tuple[float, bool]:
    """'0.02' (absolute) or '5%' (relative to the baseline) -> (amount as a fraction or a number, relative)."""
    stripped = str(text).strip()
    relative = stripped.endswith("%")
    try:
        amount = float(stripped.removesuffix("%"))
    except ValueError:
        amount = math.nan
    if not (math.isfinite(amount) and amount > 0):
        raise BakingError(f"--max-drop {quoted(text)} is not a number above 0; pass an absolute drop (0.02) or a "
                          "relative one (5%); a paired CI always has some width, so no drop at all can never be shown")
    return (amount / 100 if relative else amount), relative


def parse_clusters(specs: list[str]) -> dict[str, tuple[str, ...]]:
    """['TASK=FIELD', 'TASK=A+B'] -> {TASK: (FIELD,), ...}; a task named twice is refused. (DEFAULT_CLUSTERS
    apply besides these, where a task's docs carry the fields.)"""
    clusters: dict[str, tuple[str, ...]] = {}
    named: set[str] = set()
    for spec in specs:
        task, equals, fields = str(spec).partition("=")
        parts = tuple(f.strip() for f in fields.split("+"))
        if not equals or not task.strip() or not all(parts):
            raise BakingError(f"--cluster {quoted(spec)} is not TASK=FIELD; e.g. --cluster my_dialogues=dialogue_id")
        if task.strip() in named:
            raise BakingError(f"--cluster names {quoted(task.strip())} twice; keep one")
        named.add(task.strip())
        clusters[task.strip()] = parts
    return clusters
