"""`lm-eval-baking check`: a CI regression gate over lm_eval results.

Thresholds name a leaderboard metric (see report.HEADLINE_COLUMNS, plus
`forgetting` and any `TASK:METRIC`) and a bound; a baseline results folder
turns every headline metric the two share into a bound (baseline ± tolerance).
Each (metric, variant) pair gets a verdict; the gate passes only when all do.

By default the gate judges the variants that carry an adapter and no system
instruction: the models a bake ships. Base and prompted-base rows are the
references, not the thing under test (a base model has quality 0 by definition).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import BakingError
from ..utils.text import listed
from .collect import collect
from .rows import FORGETTING, HEADLINE_COLUMNS, Collection, Row
from .tables import other_columns

# Metrics that live in [0, 1] by construction: a bound outside it can never pass.
_UNIT_INTERVAL = {"adherence"}
_AT_MOST_ONE = {"quality"}


@dataclass(frozen=True)
class Threshold:
    metric: str
    """A column name (kl, quality, adherence, drift, forgetting, forgetting_acc) or TASK:METRIC."""
    bound: str
    """'min' or 'max'."""
    limit: float
    origin: str = ""
    """Which option asked for it, for error messages."""


@dataclass
class Verdict:
    metric: str
    variant: str
    value: float | None
    bound: str
    limit: float
    passed: bool
    note: str = ""


def parse_bound(text: str, bound: str) -> Threshold:
    """`NAME=VALUE` from --min / --max."""
    name, equals, value = text.partition("=")
    if not equals or not name.strip():
        raise BakingError(f"--{bound} {text!r} is not NAME=VALUE; e.g. --{bound} quality=0.8 or "
                          f"--{bound} baking_mckl:kl_per_token=0.1")
    return Threshold(name.strip(), bound, _number(value, f"--{bound} {name.strip()}"), f"--{bound} {text}")


def _number(text, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = float("nan")
    if not math.isfinite(value):
        raise BakingError(f"{what} needs a finite number, got {text!r}")
    return value


def validate_thresholds(thresholds: list[Threshold]) -> None:
    """Refuse bounds that contradict each other or that no result could ever meet."""
    by_metric: dict[str, dict[str, Threshold]] = {}
    for t in thresholds:
        previous = by_metric.setdefault(t.metric, {}).get(t.bound)
        if previous and previous.limit != t.limit:
            side = "lower" if t.bound == "min" else "upper"
            raise BakingError(f"contradictory thresholds: {previous.origin} and {t.origin} give {t.metric} two "
                              f"{side} bounds; keep one")
        by_metric[t.metric][t.bound] = t
        if t.metric in _UNIT_INTERVAL | _AT_MOST_ONE and t.bound == "min" and t.limit > 1:
            raise BakingError(f"{t.origin} can never pass: {t.metric} is at most 1; use a value up to 1")
        if t.metric in _UNIT_INTERVAL and t.bound == "max" and t.limit < 0:
            raise BakingError(f"{t.origin} can never pass: {t.metric} is at least 0; use a value of 0 or more")
    for metric, bounds in by_metric.items():
        low, high = bounds.get("min"), bounds.get("max")
        if low and high and low.limit > high.limit:
            raise BakingError(f"contradictory thresholds: {low.origin} is above {high.origin}; "
                              f"no {metric} can pass both")


def parse_tolerance(text: str | None) -> tuple[float, bool]:
    """'0.02' (absolute) or '5%' (relative to the baseline value) -> (amount, relative)."""
    if text is None:
        return 0.0, False
    relative = str(text).strip().endswith("%")
    amount = _number(str(text).strip().removesuffix("%"), "--tolerance")
    if amount < 0:
        raise BakingError(f"--tolerance must be 0 or more (got {text}); it is how far a metric may move "
                          "in the worse direction")
    return (amount / 100 if relative else amount), relative


def select_rows(collection: Collection, variants: list[str] | None) -> list[Row]:
    labels = [r.label for r in collection.rows]
    if variants:
        missing = [v for v in variants if v not in labels]
        if missing:
            raise BakingError(f"no variant {missing[0]!r} in the results; choose from: {listed(labels)}")
        return [r for r in collection.rows if r.label in variants]
    shipped = [r for r in collection.rows if r.variant.adapter and not r.variant.system_instruction]
    if not shipped:
        raise BakingError(f"no baked variant (peft= without --system_instruction) in the results; pass "
                          f"--variant LABEL to choose from: {listed(labels)}")
    return shipped


def _direction(metric: str, rows: list[Row]) -> bool | None:
    """True when higher is better."""
    if metric == FORGETTING:
        return False
    for column in HEADLINE_COLUMNS:
        if column.name == metric:
            return column.higher_is_better
    for row in rows:
        m = row.get(metric)
        if m is not None and m.higher_is_better is not None:
            return m.higher_is_better
    return None


def check(results, thresholds: list[Threshold], *, baseline=None, tolerance: str | None = None,
          variants: list[str] | None = None) -> list[Verdict]:
    """Judge `results` (paths, as for the report) against thresholds and/or a baseline."""
    validate_thresholds(thresholds)
    amount, relative = parse_tolerance(tolerance)
    if tolerance is not None and not baseline:
        raise BakingError("--tolerance applies to a --baseline; pass --baseline RESULTS too or drop --tolerance")
    if not thresholds and not baseline:
        raise BakingError("nothing to check: pass a threshold (e.g. --min-quality 0.8) or --baseline RESULTS")
    collection = _strict_collect(results, "RESULTS")
    rows = select_rows(collection, variants)
    verdicts: list[Verdict] = []
    for t in thresholds:
        if all(row.get(t.metric) is None for row in rows):
            known = sorted({f"{task}:{metric}" for r in rows for task, metric in r.metrics})
            raise BakingError(f"{t.origin}: no {t.metric} in the results of {listed(r.label for r in rows)}; "
                              f"run the lm_eval task that reports it, or use one of: "
                              f"{', '.join(c.name for c in HEADLINE_COLUMNS)}, {FORGETTING}, {listed(known[:8])}")
        for row in rows:
            verdicts.append(_judge(t.metric, row, t.bound, t.limit))
    if baseline:
        verdicts += _against_baseline(collection, rows, _strict_collect(baseline, "--baseline"), amount, relative)
    return verdicts


def _strict_collect(paths, what: str) -> Collection:
    """A gate must not pass on a file it could not read: any skipped file is an error here."""
    collection = collect(paths)
    unreadable = [s for s in collection.skipped if s.whole_file]
    if unreadable:
        raise BakingError(f"{what} file {listed([unreadable[0].path])} cannot be used ({unreadable[0].reason}); "
                          "remove it or fix it, the gate reads every file it is given")
    return collection


def _judge(metric: str, row: Row, bound: str, limit: float, note: str = "") -> Verdict:
    measurement = row.get(metric)
    if measurement is None:
        return Verdict(metric, row.label, None, bound, limit, False, "missing")
    value = measurement.value
    passed = value >= limit if bound == "min" else value <= limit
    return Verdict(metric, row.label, value, bound, limit, passed, note)


def _against_baseline(collection: Collection, rows: list[Row], baseline: Collection, amount: float,
                      relative: bool) -> list[Verdict]:
    metrics = [c.name for c in HEADLINE_COLUMNS] + [FORGETTING]
    metrics += [f"{task}:{metric}" for task, metric in other_columns(collection)]
    verdicts = []
    for row in rows:
        reference = baseline.row(row.label)
        if reference is None:
            continue
        for metric in metrics:
            before, now = reference.get(metric), row.get(metric)
            higher = _direction(metric, [row, reference])
            if before is None or now is None or higher is None:
                continue
            slack = amount * abs(before.value) if relative else amount
            limit = before.value - slack if higher else before.value + slack
            verdicts.append(_judge(metric, row, "min" if higher else "max", limit, note="baseline"))
    if not verdicts:
        raise BakingError(f"the baseline shares no variant and metric with the results (baseline variants: "
                          f"{listed(r.label for r in baseline.rows)}); compare runs of the same variants")
    return verdicts


def format_verdicts(verdicts: list[Verdict]) -> str:
    header = ["metric", "variant", "value", "limit", "verdict"]
    lines = [[v.metric + (" (baseline)" if v.note == "baseline" else ""), v.variant,
              "missing" if v.value is None else f"{v.value:.4g}",
              f"{'≥' if v.bound == 'min' else '≤'} {v.limit:.4g}", "PASS" if v.passed else "FAIL"] for v in verdicts]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    render = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [render(header), render(["-" * w for w in widths])] + [render(line) for line in lines]
    failed = sum(not v.passed for v in verdicts)
    out.append(f"\n{len(verdicts) - failed} passed, {failed} failed: " + ("FAIL" if failed else "PASS"))
    return "\n".join(out)


# The named thresholds of `check`: (option, metric, bound, help).
NAMED_THRESHOLDS = (
    ("--min-quality", "quality", "min", "lowest baking_mckl quality (1 = the prompt's effect fully baked in)"),
    ("--max-kl", "kl", "max", "highest baking_mckl kl_per_token"),
    ("--max-forgetting", FORGETTING, "max",
     "largest relative drop (%) of the baking_forgetting accuracy versus the base model, e.g. 3.4"),
    ("--max-drift", "drift", "max", "highest persona drift (adherence early minus late)"),
    ("--min-adherence", "adherence", "min", "lowest persona adherence"),
)


def named_threshold(option: str, value: str) -> Threshold:
    """The Threshold a named option (--min-quality 0.8, ...) asks for."""
    _, metric, bound, _ = next(n for n in NAMED_THRESHOLDS if n[0] == option)
    return Threshold(metric, bound, _number(value, option), f"{option} {value}")
