"""Settings of the commands that read results: `report`, `check` and `check-matrix`. No torch here.

Each field carries its default and help text, from which the CLI builds its options (cli/options.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

from ..core.verdicts import MAX_FORGETTING_DROP_PCT, check_forgetting_drop
from ..errors import BakingError
from ..utils.settings import in_range, setting
from ..utils.text import quoted
from .gate import Threshold, parse_bound
from .rows import FORGETTING

# The least share of the base model's k-shot gain a bake must keep on its own task (cross-task matrix).
DEFAULT_MIN_SHARE = 0.5


def check_matrix_settings(max_forgetting_drop_pct: float | None, min_share: float | None) -> None:
    """Refuse an allowed drop or least share no matrix could be judged by (None: the report's own is used)."""
    if max_forgetting_drop_pct is not None:
        check_forgetting_drop(max_forgetting_drop_pct, "--max-forgetting-drop-pct")
    if min_share is not None and not in_range(min_share, above=0, high=1):
        raise BakingError(f"--min-share must be above 0 and at most 1 (got {min_share})")


@dataclass
class ReportSettings:
    """What `lm-eval-baking report` reads and writes."""

    results: list[Path] = setting(positional=True, metavar="RESULTS", help=(
        "lm_eval --output_path folders, results_*.json files, bake or pursuit folders"))
    output: Path = setting(short="-o", help=(
        "folder for report.md, report.html, report.json and the plots (replaced as a whole)"))
    title: str = setting("lm-eval-baking report", help="the report's title")
    max_forgetting_drop_pct: float = setting(MAX_FORGETTING_DROP_PCT, metavar="PCT", help=(
        "largest allowed relative drop (%) of a forgetting task's score: the heatmap marks larger drops as "
        "failing"))

    def __post_init__(self):
        check_forgetting_drop(self.max_forgetting_drop_pct, "--max-forgetting-drop-pct")


@dataclass
class CheckSettings:
    """What `lm-eval-baking check` judges, and against which bounds."""

    results: list[Path] = setting(positional=True, metavar="RESULTS", help=(
        "lm_eval --output_path folders or results_*.json files"))
    # The named bounds: `metric` and `bound` say what each one checks (a Threshold).
    min_quality: float | None = setting(None, metavar="X", metric="quality", bound="min", help=(
        "lowest baking_mckl quality (1 = the prompt's effect fully baked in)"))
    max_kl: float | None = setting(None, metavar="X", metric="kl", bound="max", help=(
        "highest baking_mckl kl_per_token"))
    max_forgetting_drop_pct: float | None = setting(None, metavar="PCT", metric=FORGETTING, bound="max", help=(
        "largest allowed relative drop (%) of the baking_forgetting accuracy versus the base model, paired per doc "
        f"(needs lm_eval --log_samples), e.g. {MAX_FORGETTING_DROP_PCT}"))
    max_drift: float | None = setting(None, metavar="X", metric="drift", bound="max", help=(
        "highest persona drift (adherence early minus late)"))
    min_adherence: float | None = setting(None, metavar="X", metric="adherence", bound="min", help=(
        "lowest persona adherence"))
    min: list[str] = setting(default_factory=list, repeat=True, metavar="NAME=VALUE", help=(
        "lower bound for any metric: a column name or TASK:METRIC (repeatable)"))
    max: list[str] = setting(default_factory=list, repeat=True, metavar="NAME=VALUE", help=(
        "upper bound for any metric (repeatable)"))
    baseline: list[Path] | None = setting(None, metavar="RESULTS", help=(
        "earlier results: no shared headline metric may get worse by more than --tolerance"))
    tolerance: str | None = setting(None, help=(
        "allowed move in the worse direction: absolute (0.02) or relative (5%); default 0"))
    variants: list[str] | None = setting(None, flag="variant", repeat=True, metavar="LABEL", help=(
        "judge this report variant (repeatable; default: every adapter without a system prompt)"))
    inconclusive: str | None = setting(None, choices=("pass", "fail"), help=(
        "treat an inconclusive gate as passing (exit 0) or failing (exit 1) instead of exit 3"))

    def __post_init__(self):
        for f in self.named_bounds():
            value = getattr(self, f.name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                shown = value if isinstance(value, float) else quoted(value)
                raise BakingError(f"{_option(f.name)} needs a finite number, got {shown}")
        if self.inconclusive not in (None, "pass", "fail"):
            raise BakingError(f"--inconclusive must be pass or fail (got {quoted(self.inconclusive)})")

    @classmethod
    def named_bounds(cls):
        """The fields that are a bound on one named metric (--min-quality, --max-kl, ...)."""
        return [f for f in fields(cls) if "metric" in f.metadata]

    def thresholds(self) -> list[Threshold]:
        """Every bound asked for: the named ones, then --min and --max."""
        found = [Threshold(f.metadata["metric"], f.metadata["bound"], float(value), f"{_option(f.name)} {value:g}")
                 for f in self.named_bounds() if (value := getattr(self, f.name)) is not None]
        return (found + [parse_bound(text, "min") for text in self.min]
                + [parse_bound(text, "max") for text in self.max])


@dataclass
class CheckMatrixSettings:
    """How `lm-eval-baking check-matrix` re-judges a cross-task matrix (None: the run's own setting)."""

    report: Path = setting(positional=True, metavar="CROSS_TASK", help=(
        "a cross-task output folder or its cross_task.json"))
    max_forgetting_drop_pct: float | None = setting(None, metavar="PCT", help=(
        "largest allowed relative drop (%) of another task's score (default: the run's, "
        f"{MAX_FORGETTING_DROP_PCT})"))
    min_share: float | None = setting(None, metavar="S", help=(
        f"least share of the k-shot gain a bake must keep on its own task (default: the run's, {DEFAULT_MIN_SHARE})"))

    def __post_init__(self):
        check_matrix_settings(self.max_forgetting_drop_pct, self.min_share)


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")
