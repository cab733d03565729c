"""`lm-eval-baking check`: a CI regression gate whose verdicts can be trusted.

Thresholds name a leaderboard metric (`kl`, `quality`, `adherence`, `drift`,
`forgetting`, `forgetting_acc`) or any `TASK:METRIC`, and a bound; a baseline
results folder turns every headline metric the two share into a bound
(baseline ± tolerance). Every verdict is three-way, judged on the 95% CI, never
on a point value alone:

- PASS: the whole CI is on the right side of the limit;
- FAIL: the whole CI is on the wrong side (the miss is established);
- INCONCLUSIVE: the CI straddles the limit; the line says roughly how many docs
  would resolve it.

The CI is the one computed for the metric (quality's paired bootstrap, drift's
over conversations, forgetting's paired per-doc comparison), else ±1.96
lm_eval stderr. A metric with neither, or with an unbounded CI, is INCONCLUSIVE
(never PASS), and a value outside its metric's range (an accuracy of 3.5, an
MC-KL whose whole CI is below 0) is refused as bad input: core.verdicts holds
both rules.
Exit status: 0 all pass, 1 any fail, 3 inconclusive (none failed), 2 bad input.
`--inconclusive pass|fail` maps inconclusive for pipelines that need two states.

By default the gate judges the variants that carry an adapter and no system
instruction: the models a bake ships. Base and prompted-base rows are the
references, not the thing under test (a base model has quality 0 by definition).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..constants import BAKE_RECORD, CROSS_TASK_RECORD, FORGETTING_GROUP, PURSUIT_RECORD
from ..core.verdicts import (
    ESTIMATES, MAX_FORGETTING_DROP_PCT, Check, Verdict, combine, finite_ci, judge_bound, metric_range, outside_range,
    range_text, refuse_impossible, resolve_text,
)
from ..errors import BakingError
from ..utils.text import listed, quoted
from .collect import collect
from .derived import forgetting_members, forgetting_measurement, judge_forgetting, paired_change
from .rows import FORGETTING, HEADLINE_COLUMNS, Z95, Collection, Measurement, Row, Variant
from .tables import other_columns

PASS, FAIL, INCONCLUSIVE = Verdict.PASS.value, Verdict.FAIL.value, Verdict.INCONCLUSIVE.value


@dataclass(frozen=True)
class Threshold:
    metric: str
    """A column name (kl, quality, adherence, drift, forgetting, forgetting_acc) or TASK:METRIC."""
    bound: str
    """'min' or 'max'."""
    limit: float
    origin: str = ""
    """Which option asked for it, for error messages."""


def parse_bound(text: str, bound: str) -> Threshold:
    """`NAME=VALUE` from --min / --max."""
    name, equals, value = text.partition("=")
    if not equals or not name.strip():
        raise BakingError(f"--{bound} {quoted(text)} is not NAME=VALUE; e.g. --{bound} quality=0.8 or "
                          f"--{bound} baking_mckl:kl_per_token=0.1")
    return Threshold(name.strip(), bound, _number(value, f"--{bound} {name.strip()}"), f"--{bound} {text}")


def _number(text, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = float("nan")
    if not math.isfinite(value):
        raise BakingError(f"{what} needs a finite number, got {quoted(text)}")
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
        low, high = metric_range(lm_metric(t.metric))  # a bound outside this range can never pass
        if t.bound == "min" and t.limit > high:
            raise BakingError(f"{t.origin} can never pass: {t.metric} is at most {high:g}; use a value up to {high:g}")
        if t.bound == "max" and t.limit < low:
            raise BakingError(f"{t.origin} can never pass: {t.metric} is at least {low:g}; "
                              f"use a value of {low:g} or more")
        if t.metric == FORGETTING and t.bound == "max" and t.limit <= 0:
            raise BakingError(f"{t.origin}: the allowed drop must be above 0 % (e.g. {MAX_FORGETTING_DROP_PCT}); a "
                              "paired CI always has some width, so no drop at all can never be shown")
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
        raise BakingError(f"--tolerance must be 0 or more (got {quoted(text)}); it is how far a metric may move "
                          "in the worse direction")
    return (amount / 100 if relative else amount), relative


def select_rows(collection: Collection, variants: list[str] | None) -> list[Row]:
    labels = [r.label for r in collection.rows]
    if not labels:  # only records of ours (a bake folder): no variant to offer as a choice
        records = [f"{folder}/{name}" for name, entries in (
            (BAKE_RECORD, collection.bakes), (PURSUIT_RECORD, collection.pursuits),
            (CROSS_TASK_RECORD, collection.cross_task_reports)) for folder, _ in entries]
        hint = ("; for a cross-task run use `lm-eval-baking check-matrix`" if collection.cross_task_reports else
                "; run lm_eval on the bake (the command `bake` printed) with --output_path DIR --log_samples "
                "and pass DIR")
        more = "…" if len(records) > 3 else ""
        raise BakingError(f"no lm_eval results to judge, only {listed(records[:3])}{more}; `check` judges lm_eval "
                          f"results_*.json{hint}")
    if variants:
        missing = [v for v in variants if v not in labels]
        if missing:
            raise BakingError(f"no variant {quoted(missing[0])!r} in the results; choose from: {listed(labels)}")
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
          variants: list[str] | None = None) -> list[Check]:
    """Judge `results` (paths, as for the report) against thresholds and/or a baseline."""
    validate_thresholds(thresholds)
    amount, relative = parse_tolerance(tolerance)
    if tolerance is not None and not baseline:
        raise BakingError("--tolerance applies to a --baseline; pass --baseline RESULTS too or drop --tolerance")
    if not thresholds and not baseline:
        raise BakingError("nothing to check: pass a threshold (e.g. --min-quality 0.8) or --baseline RESULTS")
    # The baseline is read first: a missing one is named, not hidden behind a problem of the results.
    baseline_collection = _strict_collect(baseline, "--baseline") if baseline else None
    collection = _strict_collect(results, "RESULTS")
    rows = select_rows(collection, variants)
    checks: list[Check] = []
    for t in thresholds:
        if t.metric != FORGETTING and all(row.get(t.metric) is None for row in rows):
            known = sorted({f"{task}:{metric}" for r in rows for task, metric in r.metrics})
            raise BakingError(f"{t.origin}: no {t.metric} in the results of {listed(r.label for r in rows)}; "
                              f"run the lm_eval task that reports it, or use one of: "
                              f"{', '.join(c.name for c in HEADLINE_COLUMNS)}, {FORGETTING}, {listed(known[:8])}")
        for row in rows:
            if t.metric == FORGETTING:
                if any(task.startswith(FORGETTING_GROUP) for task, _ in row.metrics) or row.forgetting:
                    checks.append(judge_forgetting_row(row, t, collection))
            elif row.get(t.metric) is not None:  # a row from another evaluation (say, forgetting only) is not judged
                checks.append(judge_value(t.metric, row.label, row.get(t.metric), t.bound, t.limit, _docs(row, t.metric)))
    if thresholds and not checks:
        raise BakingError(f"no selected variant reports {listed(t.metric for t in thresholds)}; pass the results of "
                          "the evaluations that do")
    if baseline:
        checks += _against_baseline(collection, rows, baseline_collection, amount, relative)
    return checks


def _strict_collect(paths, what: str) -> Collection:
    """A gate must not pass on a file it could not read: any skipped file is an error here."""
    collection = collect(paths)
    unreadable = [s for s in collection.skipped if s.whole_file]
    if unreadable:
        raise BakingError(f"{what} file {listed([unreadable[0].path])} cannot be used ({unreadable[0].reason}); "
                          "remove it or fix it, the gate reads every file it is given")
    return collection


def _docs(row: Row, metric: str) -> int | None:
    for column in HEADLINE_COLUMNS:
        if column.name == metric:
            return len(row.samples.get(column.task, {})) or None
    return len(row.samples.get(metric.partition(":")[0], {})) or None


def lm_metric(name: str) -> str:
    """The lm_eval metric a threshold name stands for (kl -> kl_per_token, TASK:METRIC -> METRIC)."""
    column = next((c for c in HEADLINE_COLUMNS if c.name == name), None)
    return column.metric if column is not None else name.partition(":")[2] or name


def judge_value(metric: str, variant: str, m: Measurement | None, bound: str, limit: float, docs: int | None = None,
                note: str = "", *, check_range: bool = True) -> Check:
    """Three-way on the 95% CI (core.verdicts.judge_bound); a value that cannot be `metric` is refused."""
    if m is None or not math.isfinite(m.value):
        return Check(metric, variant, None, None, bound, limit, FAIL, "missing")
    ci = m.interval()
    if check_range:
        refuse_impossible(_shown(metric), m.value, ci, m.source or variant)
    name = lm_metric(metric)
    if ci is not None and name not in ESTIMATES:  # a normal-approximation CI can cross 0 or 1: the score cannot
        floor, ceiling = metric_range(name)
        ci = (max(ci[0], floor), min(ci[1], ceiling))
    verdict, why = judge_bound(m.value, ci, bound, limit, docs)
    if not finite_ci(ci) and outside_range(name, m.value):  # an estimate without a CI: noise or damage, unknowable
        why += f"; {m.value:.4g} is outside {name}'s range {range_text(name)}"
    note = "; ".join(part for part in (note, why) if part)
    return Check(metric, variant, m.value, ci, bound, limit, verdict.value, note)


def _shown(metric: str) -> str:
    """How a refusal names a metric: its task and lm_eval name (baking_mckl:quality), as a file holds it."""
    column = next((c for c in HEADLINE_COLUMNS if c.name == metric), None)
    return f"{column.task}:{column.metric}" if column is not None else metric


def judge_forgetting_row(row: Row, t: Threshold, collection: Collection, tasks: list[str] | None = None) -> Check:
    """The forgetting group's (or `tasks`') paired verdict of `row` against the plain base model."""
    base = next((r for r in collection.rows if r.variant == Variant(row.variant.model)), None)
    judged = judge_forgetting(base, row, collection, t.limit, tasks) if base is not None else None
    if judged is None:
        raise BakingError(f"{t.origin} needs per-doc output of the plain base model and of {quoted(row.label)} on "
                          "the baking_forgetting tasks: run lm_eval with --log_samples for both (or use "
                          "`lm-eval-baking forgetting`)")
    m = forgetting_measurement(judged)
    members = forgetting_members(collection, base, row, tasks=tasks)
    failed = judged["failed_tasks"]
    note = f"paired over {judged['group']['comparison']['n']} docs of {len(members)} tasks"
    note += f"; tasks failing on their own: {', '.join(failed)}" if failed else ""
    needed = judged["group"]["judgement"]["docs_to_resolve"]
    if judged["verdict"] == INCONCLUSIVE and needed:
        note += f"; {resolve_text(needed)}"
    if not math.isfinite(m.value):  # the base model scored 0: a relative drop is undefined (INCONCLUSIVE)
        note += "; the base model scores 0 on these docs, so no relative change"
    value = m.value if math.isfinite(m.value) else None
    return Check(FORGETTING, row.label, value, m.ci, "max", t.limit, judged["verdict"], note)


def _against_baseline(collection: Collection, rows: list[Row], baseline: Collection, amount: float,
                      relative: bool) -> list[Check]:
    metrics = [c.name for c in HEADLINE_COLUMNS]
    metrics += [f"{task}:{metric}" for task, metric in other_columns(collection)]
    checks = []
    for row in rows:
        reference = baseline.row(row.label)
        if reference is None:
            continue
        for metric in metrics:
            before, now = reference.get(metric), row.get(metric)
            higher = _direction(metric, [row, reference])
            if before is None or now is None or higher is None or not math.isfinite(before.value):
                continue
            slack = amount * abs(before.value) if relative else amount
            limit = before.value - slack if higher else before.value + slack
            for m, where in ((before, reference.label), (now, row.label)):
                refuse_impossible(_shown(metric), m.value, m.interval(), m.source or where)
            change = _change_ci(metric, row, reference, before, now, collection)
            checks.append(judge_value(metric, row.label, change, "min" if higher else "max", limit, note="baseline",
                                      check_range=False))
    if not checks:
        raise BakingError(f"the baseline shares no variant and metric with the results (baseline variants: "
                          f"{listed(r.label for r in baseline.rows)}); compare runs of the same variants")
    return checks


def _change_ci(metric: str, row: Row, reference: Row, before: Measurement, now: Measurement,
               collection: Collection) -> Measurement:
    """`now` with the CI of (now − before) moved onto it: paired over the docs both runs answered when their
    per-doc output is there, else from the two stderrs (unpaired), else none."""
    paired = paired_change(metric, reference, row, collection)
    if paired is not None:
        return Measurement(now.value, None, now.higher_is_better, "paired",
                           (before.value + paired.low, before.value + paired.high))
    ses = [_stderr(m) for m in (before, now)]
    if all(se is not None for se in ses):
        half = Z95 * math.hypot(*ses)
        return Measurement(now.value, None, now.higher_is_better, "unpaired", (now.value - half, now.value + half))
    return Measurement(now.value, None, now.higher_is_better, "no CI")


def _stderr(m: Measurement) -> float | None:
    if m.stderr is not None:
        return m.stderr
    if m.ci is not None and all(math.isfinite(b) for b in m.ci):
        return (m.ci[1] - m.ci[0]) / (2 * Z95)
    return None


def overall(checks: list[Check]) -> str:
    return combine(c.verdict for c in checks)


def format_checks(checks: list[Check]) -> str:
    header = ["metric", "variant", "value", "95% CI", "limit", "verdict", "note"]
    lines = [[c.metric + (" (baseline)" if c.note.startswith("baseline") else ""), c.variant,
              "missing" if c.value is None else f"{c.value:.4g}",
              "–" if c.ci is None else f"[{c.ci[0]:.4g}, {c.ci[1]:.4g}]",
              f"{'≥' if c.bound == 'min' else '≤'} {c.limit:.4g}", c.verdict,
              c.note.removeprefix("baseline").removeprefix("; ")] for c in checks]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    render = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [render(header), render(["-" * w for w in widths])] + [render(line) for line in lines]
    counts = {v: sum(c.verdict == v for c in checks) for v in (PASS, FAIL, INCONCLUSIVE)}
    out.append(f"\n{counts[PASS]} passed, {counts[FAIL]} failed, {counts[INCONCLUSIVE]} inconclusive: "
               f"{overall(checks)}")
    return "\n".join(out)
