"""The one home of a verdict: PASS / FAIL / INCONCLUSIVE, their exit codes, how many verdicts combine.

* ``judge`` - PASS only when even the worst end of the CI is within an allowed worsening, FAIL only when
  even the best end is beyond it, else INCONCLUSIVE with the docs that would resolve it (never fewer
  docs than the comparison already has).
* ``combine`` - FAIL if any FAIL, else INCONCLUSIVE if any INCONCLUSIVE, else PASS; an empty list is
  INCONCLUSIVE, because checking nothing proves nothing.
* ``EXIT_CODES`` - what every command that gives a verdict exits with.
* ``metric_range`` / ``impossible_value`` - where a metric can lie, and which values (with their CI)
  cannot be that metric: those are refused as bad input, never judged.
* ``judge_bound`` - a value with its CI against a bound (`check --min-quality 0.8`): PASS / FAIL /
  INCONCLUSIVE. A missing or unbounded CI proves nothing: INCONCLUSIVE, never PASS.
* ``Check`` - the record of one judged value: a metric of a variant, its value and CI, the bound, the
  verdict and a note. `check`, the pipeline and pipeline.json hold their checks as these.
* ``docs_to_resolve`` / ``resolve_text`` - the one rule for how many docs would resolve an INCONCLUSIVE
  (``judge``, ``judge_bound``, the cross-task matrix's share kept) and how it is said. The docs a paired
  test needs to *detect* a given change at 80% power are another question: ``core.stats.docs_needed``,
  the inverse of the minimum detectable difference.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import BakingError
from .stats import CONFIDENCE, Interval, PairedComparison, compare_paired, paired_scores, unbounded_interval


class Verdict(str, enum.Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"


# The allowed relative drop (%) of another task's score after a bake: the bound the project brief claims
# for baking, a target under test. Every forgetting check's default (flags, recipes, reports) is this one.
MAX_FORGETTING_DROP_PCT = 3.4


def check_forgetting_drop(value, option: str) -> None:
    """The one rule of an allowed forgetting drop (`option`, its name where it was given): a finite percentage
    above 0, since a paired CI always has some width and no drop at all can never be shown."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise BakingError(f"{option} must be a finite number above 0 (got {value}); it is the largest allowed drop "
                          f"in percent, e.g. {MAX_FORGETTING_DROP_PCT}")

# 2 is bad input (cli.main): a verdict never exits 2.
EXIT_CODES = {Verdict.PASS.value: 0, Verdict.FAIL.value: 1, Verdict.INCONCLUSIVE.value: 3}


_UNIT = (0.0, 1.0)
# Where each metric can lie, by lm_eval metric name (filters stripped: "acc,flexible" is "acc"), plus the
# derived forgetting drop (%): nothing can lose more than all of its score. Metrics not named here can be
# anything. Every range check (thresholds that can never pass, values that cannot be right) reads this.
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "acc": _UNIT, "acc_norm": _UNIT, "exact_match": _UNIT, "f1": _UNIT,
    "kl_per_token": (0.0, math.inf), "kl_per_sequence": (0.0, math.inf), "quality": (-math.inf, 1.0),
    "adherence": _UNIT, "adherence_early": _UNIT, "adherence_mid": _UNIT, "adherence_late": _UNIT,
    "adherence_greedy": _UNIT, "drift": (-1.0, 1.0), "similarity": (-1.0, 1.0),
    "forgetting": (-math.inf, 100.0),
}
# Monte-Carlo estimates: one run's estimate can come out beyond the quantity's range (an MC-KL below 0,
# so a quality above 1) by sampling noise, so only an estimate whose whole CI is outside is impossible;
# without a finite CI noise cannot be told from damage, and the verdict is INCONCLUSIVE (judge_bound).
# Every other metric is a mean of bounded per-doc scores: any value outside its range is impossible.
ESTIMATES = frozenset({"kl_per_token", "kl_per_sequence", "quality"})
# Float rounding (a prompted base's KL of -1e-9) is not a value outside the range.
_RANGE_SLACK = 1e-6


def metric_range(metric: str) -> tuple[float, float]:
    """(lowest, highest) value of an lm_eval metric (a bare name, NAME,FILTER or TASK:NAME); unknown: unbounded."""
    name = metric.rpartition(":")[2].partition(",")[0]
    return METRIC_RANGES.get(name, (-math.inf, math.inf))


def range_text(metric: str) -> str:
    low, high = metric_range(metric)
    return f"{'(-inf' if low == -math.inf else f'[{low:g}'}, {'inf)' if high == math.inf else f'{high:g}]'}"


def finite_ci(ci) -> bool:
    """True when `ci` is a (low, high) of finite numbers: the only kind a verdict other than INCONCLUSIVE rests on."""
    return ci is not None and all(isinstance(v, (int, float)) and math.isfinite(v) for v in ci)


def is_estimate(metric: str) -> bool:
    return metric.rpartition(":")[2].partition(",")[0] in ESTIMATES


def outside_range(metric: str, low_end: float, high_end: float | None = None) -> bool:
    """True when all of [low_end, high_end] (one value when high_end is None) lies outside `metric`'s range."""
    low, high = metric_range(metric)
    high_end = low_end if high_end is None else high_end
    return high_end < low - _RANGE_SLACK or low_end > high + _RANGE_SLACK


def impossible_value(metric: str, value: float, ci: tuple[float, float] | None = None) -> bool:
    """True when `value` (with its 95% CI, for an estimate) cannot be a `metric`: a damaged or hand-edited file."""
    if not math.isfinite(value):
        return True
    if is_estimate(metric):
        return finite_ci(ci) and outside_range(metric, *ci)
    return outside_range(metric, value)


def refuse_impossible(metric: str, value: float, ci: tuple[float, float] | None, where: str) -> None:
    """A BakingError naming the file, the metric, its value and range when `impossible_value`."""
    if not impossible_value(metric, value, ci):
        return
    shown = f"{value:.4g}" + (f" (95% CI [{ci[0]:.4g}, {ci[1]:.4g}])" if is_estimate(metric) else "")
    raise BakingError(f"{where}: {metric} is {shown}, outside its range {range_text(metric)}, so the file is "
                      "damaged or was edited by hand; re-run the evaluation that wrote it")


def docs_to_resolve(n: int | None, half_width: float, gap: float) -> int | None:
    """Docs that would resolve an INCONCLUSIVE: a CI of `half_width` on `n` docs whose value is `gap` from the bound.

    The half-width shrinks as 1/sqrt(n), so it reaches the gap at n * (half_width / gap)**2 docs (rounded to
    6 places first, so float noise cannot add a doc). For a normal CI this is ``core.stats.docs_needed`` at
    50% power; the CIs here are percentile or exact, so only their half-width is used. Never n or fewer: a
    lopsided CI can straddle the bound with a half-width already below the gap, and an INCONCLUSIVE always
    needs more docs than it has. None when nothing can be said: no docs counted, a value on the bound (or
    so near it that no float counts the docs), or a half-width that is not finite.
    """
    if not n or not (math.isfinite(half_width) and math.isfinite(gap)) or gap == 0:
        return None
    try:
        return max(int(n) + 1, math.ceil(round(n * (half_width / abs(gap)) ** 2, 6)))
    except OverflowError:
        return None


def resolve_text(docs: int | None) -> str:
    """How a verdict's note says `docs_to_resolve` ('' for None)."""
    return "" if docs is None else f"about {docs} docs would resolve it"


@dataclass
class Check:
    """One judged value: `metric` of `variant`, its value and 95% CI, `bound` ('min' or 'max') `limit`, the verdict."""
    metric: str
    variant: str
    value: float | None
    ci: tuple[float, float] | None
    bound: str
    limit: float
    verdict: str
    note: str = ""

    def __post_init__(self):
        self.verdict = Verdict(self.verdict).value  # a Verdict member or its value; anything else is a bug

    @property
    def passed(self) -> bool:
        return self.verdict == Verdict.PASS.value


def judge_bound(value: float, ci: tuple[float, float] | None, bound: str, limit: float,
                docs: int | None = None) -> tuple[Verdict, str]:
    """(verdict, note) of `value` with its 95% CI against `bound` ('min' or 'max') `limit`.

    PASS when the whole CI meets the limit, FAIL when none of it does, else INCONCLUSIVE (with the docs
    that would resolve it, when `docs` were judged). A CI that is missing or has an end that is not a
    finite number says nothing about where the value lies: INCONCLUSIVE, never PASS (nor FAIL).
    """
    if ci is None:
        return Verdict.INCONCLUSIVE, ("no 95% CI (no lm_eval stderr, no per-doc output of 2+ docs): not judged; "
                                      "rerun lm_eval with --log_samples on more docs")
    if not finite_ci(ci):
        return Verdict.INCONCLUSIVE, (f"95% CI [{ci[0]:.4g}, {ci[1]:.4g}] is unbounded: not judged; "
                                      "evaluate more docs")
    low, high = ci
    meets = (lambda v: v >= limit) if bound == "min" else (lambda v: v <= limit)
    worst, best = (low, high) if bound == "min" else (high, low)
    if meets(worst):
        return Verdict.PASS, ""
    if not meets(best):
        return Verdict.FAIL, ""
    return Verdict.INCONCLUSIVE, resolve_text(docs_to_resolve(docs, (high - low) / 2, value - limit))


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
    allowed, note = threshold, ""
    if relative and comparison.relative_change is None:
        # Any share of a baseline of 0 is 0: no worsening is allowed, so the absolute difference is judged
        # against 0. A 0/1 score whose baseline is 0 cannot fall further: PASS, as its CI shows.
        relative, allowed, note = False, 0.0, "the baseline's mean is 0, so a relative drop allows none; "
    fmt = (lambda v: f"{v:+.1%}") if relative else (lambda v: f"{v:+.4g}")
    change, ci = ((comparison.relative_change, comparison.relative_ci) if relative
                  else (comparison.difference, comparison.difference_ci))
    if not higher_is_better:  # a rise is the worsening: flip so that negative always means worse
        change, ci = -change, Interval(-ci.high, -ci.low, ci.confidence)
    worst, best, limit = ci.low, ci.high, -allowed if allowed else 0.0  # not -0.0, which prints as '-0'
    if not finite_ci((ci.low, ci.high)):  # the same rule as judge_bound: an unbounded CI proves nothing
        return Judgement(Verdict.INCONCLUSIVE, float(change), ci, threshold, relative, None,
                         f"{note}the CI [{fmt(ci.low)}, {fmt(ci.high)}] is unbounded; evaluate more docs")
    docs = None
    if worst >= limit:
        verdict, reason = Verdict.PASS, f"worst case {fmt(worst)} is within {fmt(limit)}"
    elif best < limit:
        verdict, reason = Verdict.FAIL, f"best case {fmt(best)} is beyond {fmt(limit)}"
    else:
        verdict = Verdict.INCONCLUSIVE
        reason = f"worst case {fmt(worst)} is beyond {fmt(limit)}, best case {fmt(best)} within it"
        docs = docs_to_resolve(comparison.n, (ci.high - ci.low) / 2.0, change - limit)
        reason += f"; {resolve_text(docs)}" if docs else ""
    return Judgement(verdict, float(change), ci, threshold, relative, docs, note + reason)


def false_fail_rate(base, other, threshold: float, *, relative: bool, replicates: int = 20, seed: int = 0,
                    n_boot: int = 1000, confidence: float = CONFIDENCE, higher_is_better: bool = True) -> float:
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
