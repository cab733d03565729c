"""The one home of a verdict: PASS / FAIL / INCONCLUSIVE, their exit codes, how many verdicts combine.

* ``judge`` - PASS only when even the worst end of the CI is within an allowed worsening, FAIL only when
  even the best end is beyond it, else INCONCLUSIVE with the docs that would resolve it (never fewer
  docs than the comparison already has).
* ``combine`` - FAIL if any FAIL, else INCONCLUSIVE if any INCONCLUSIVE, else PASS; an empty list is
  INCONCLUSIVE, because checking nothing proves nothing.
* ``EXIT_CODES`` - what every command that gives a verdict exits with.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from .stats import Interval, PairedComparison, compare_paired, paired_scores, unbounded_interval


class Verdict(str, enum.Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"


# The allowed relative drop (%) of another task's score after a bake: the bound the project brief claims
# for baking, a target under test. Every forgetting check's default (flags, recipes, reports) is this one.
MAX_FORGETTING_DROP_PCT = 3.4

# 2 is bad input (cli.main): a verdict never exits 2.
EXIT_CODES = {Verdict.PASS.value: 0, Verdict.FAIL.value: 1, Verdict.INCONCLUSIVE.value: 3}


def combine(verdicts: Iterable[str]) -> str:
    """One verdict of many (values or Verdict members); nothing checked is INCONCLUSIVE, never PASS."""
    values = {Verdict(v).value for v in verdicts}
    if Verdict.FAIL.value in values:
        return Verdict.FAIL.value
    if Verdict.INCONCLUSIVE.value in values or not values:
        return Verdict.INCONCLUSIVE.value
    return Verdict.PASS.value


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    change: float
    ci: Interval
    threshold: float
    relative: bool
    docs_to_resolve: int | None
    reason: str

    def to_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict.value}


def judge(comparison: PairedComparison, threshold: float, *, relative: bool,
          higher_is_better: bool = True) -> Judgement:
    """PASS / FAIL / INCONCLUSIVE of a comparison against an allowed worsening `threshold` (> 0)."""
    if not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold is the allowed worsening and must be a finite number > 0, got {threshold!r}")
    confidence = comparison.difference_ci.confidence
    fmt = (lambda v: f"{v:+.1%}") if relative else (lambda v: f"{v:+.4g}")
    if relative and comparison.relative_change is None:
        return Judgement(Verdict.INCONCLUSIVE, float("nan"), unbounded_interval(confidence), threshold, True, None,
                         "base mean is 0, so a relative change is undefined; use an absolute threshold")
    change, ci = ((comparison.relative_change, comparison.relative_ci) if relative
                  else (comparison.difference, comparison.difference_ci))
    if not higher_is_better:  # a rise is the worsening: flip so that negative always means worse
        change, ci = -change, Interval(-ci.high, -ci.low, ci.confidence)
    worst, best, limit = ci.low, ci.high, -threshold
    docs = None
    if worst >= limit:
        verdict, reason = Verdict.PASS, f"worst case {fmt(worst)} is within {fmt(limit)}"
    elif best < limit:
        verdict, reason = Verdict.FAIL, f"best case {fmt(best)} is beyond {fmt(limit)}"
    else:
        verdict = Verdict.INCONCLUSIVE
        reason = f"worst case {fmt(worst)} is beyond {fmt(limit)}, best case {fmt(best)} within it"
        half = (ci.high - ci.low) / 2.0
        if math.isfinite(half) and change != limit:
            # The half-width shrinks as 1/sqrt(n) (rounding first, so float noise cannot add a doc);
            # n or fewer is an artefact of a lopsided percentile CI: an INCONCLUSIVE asks for more.
            docs = max(comparison.n + 1, math.ceil(round(comparison.n * (half / abs(change - limit)) ** 2, 6)))
            reason += f"; about {docs} docs would resolve it"
    return Judgement(verdict, float(change), ci, threshold, relative, docs, reason)


def false_fail_rate(base, other, threshold: float, *, relative: bool, replicates: int = 20, seed: int = 0,
                    n_boot: int = 1000, confidence: float = 0.95, higher_is_better: bool = True) -> float:
    """Share of doc-resampled replicates of (base, other) that ``judge`` FAILs: ~0 for a harmless bake."""
    base, other = paired_scores(base, other)
    if int(replicates) != replicates or replicates < 1:
        raise ValueError(f"replicates must be a positive integer, got {replicates!r}")
    rng = np.random.default_rng(seed)
    fails = 0
    for r in range(replicates):
        idx = rng.integers(0, base.size, size=base.size)
        comparison = compare_paired(base[idx], other[idx], n_boot=n_boot, seed=seed + r + 1, confidence=confidence)
        verdict = judge(comparison, threshold, relative=relative, higher_is_better=higher_is_better).verdict
        fails += verdict is Verdict.FAIL
    return fails / replicates
