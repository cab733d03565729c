"""What the report and the gate derive from per-doc output: paired forgetting, drift with CIs, quality's CI.

Every comparison here pairs two rows' docs (same doc_id and doc_hash) and
carries a CI; where a row has no per-doc output (lm_eval run without
`--log_samples`), nothing is derived rather than something unpaired.
"""

from __future__ import annotations

import numpy as np

from ..constants import DRIFT_TASK, FORGETTING_GROUP, MCKL_TASK
from ..core.stats import CONFIDENCE, Interval, compare_paired, ratio_quality_ci
from .drift import drift_summary, paired_by_turn
from .forgetting import RESAMPLES, judge_adapter
from .rows import FORGETTING, FORGETTING_METRIC, HEADLINE_COLUMNS, Collection, Measurement, Row, Variant
from .samples import paired_values


def add_derived(rows: dict[Variant, Row], collection: Collection, max_forgetting_drop_pct: float) -> None:
    for row in rows.values():
        _quality_ci(row)
        _drift(row)
    for row in rows.values():
        base = rows.get(Variant(row.variant.model))
        if base is not None and not row.variant.is_plain_base:
            judged = judge_forgetting(base, row, collection, max_forgetting_drop_pct)
            if judged is not None:
                row.forgetting = judged
                row.metrics[(FORGETTING, "drop_pct")] = forgetting_measurement(judged)
    collection.drift_pairs = _drift_pairs(list(rows.values()))


def forgetting_members(collection: Collection, *rows: Row, tasks: list[str] | None = None) -> list[str]:
    """The leaf tasks (of the forgetting group, or of `tasks`, groups expanded) every row answered doc by doc."""
    if tasks:
        members = [m for t in tasks for m in (collection.subtasks.get(t) or [t])]
    else:
        members = collection.subtasks.get(FORGETTING_GROUP) or sorted(
            {t for r in rows for t in r.samples if t.startswith(f"{FORGETTING_GROUP}_")})
    return [t for t in members if all(t in r.samples for r in rows)]


def judge_forgetting(base: Row, row: Row, collection: Collection, max_forgetting_drop_pct: float,
                     tasks: list[str] | None = None) -> dict | None:
    """The paired forgetting judgement of `row` against the plain base row, or None without per-doc output."""
    members = forgetting_members(collection, base, row, tasks=tasks)
    base_docs, row_docs = {}, {}
    for task in members:
        a, b = base.samples[task], row.samples[task]
        metric = next((m for m in (FORGETTING_METRIC, "exact_match") if any(m in doc for doc in a.values())), None)
        shared = [d for d in a if d in b and a[d].get("hash") == b[d].get("hash") and metric in a[d] and metric in b[d]]
        if shared:
            base_docs[task] = {d: float(a[d][metric]) for d in shared}
            row_docs[task] = {d: float(b[d][metric]) for d in shared}
    return judge_adapter(base_docs, row_docs, max_forgetting_drop_pct) if base_docs else None


def forgetting_measurement(judged: dict) -> Measurement:
    """The group's pooled relative drop (%, positive = worse) with its CI and verdict, for tables and the gate."""
    comparison = judged["group"]["comparison"]
    rel, ci = comparison["relative_change"], comparison["relative_ci"]
    if rel is None or ci is None:
        return Measurement(float("nan"), None, False, "paired per doc", None, judged["verdict"])
    # 0.0 - x rather than -x: an unchanged adapter shows a drop of 0, not -0.
    return Measurement(0.0 - 100 * rel, None, False, "paired per doc", (0.0 - 100 * ci["high"], 0.0 - 100 * ci["low"]),
                       judged["verdict"])


def _quality_ci(row: Row) -> None:
    """Quality's 95% CI: lm_eval reports it as quality_ci_low/high; where it could not (an unbounded interval is
    no number for lm_eval), it is recomputed from the per-doc (model KL, base KL) pairs."""
    quality = row.metrics.get((MCKL_TASK, "quality"))
    if quality is None:
        return
    low, high = row.metrics.get((MCKL_TASK, "quality_ci_low")), row.metrics.get((MCKL_TASK, "quality_ci_high"))
    # A CI that does not hold its own value comes from a hand-edited file: it is not used.
    if low is not None and high is not None and low.value <= quality.value <= high.value:
        quality.ci = (low.value, high.value)
        return
    pairs = [doc["quality"] for doc in row.samples.get(MCKL_TASK, {}).values() if isinstance(doc.get("quality"), list)]
    if len(pairs) >= 2:
        interval = ratio_quality_ci([p[0] for p in pairs], [p[1] for p in pairs], n_boot=RESAMPLES)
        quality.ci = (interval.low, interval.high)


def _drift(row: Row) -> None:
    docs = row.samples.get(DRIFT_TASK)
    if not docs:
        return
    row.drift = drift_summary(docs)
    if len(row.drift) == 1:  # one persona: its curve and CIs stand for the row's drift columns
        (summary,) = row.drift.values()
        row.drift_curve = {turn: entry["value"] for turn, entry in summary["turns"].items()}
        drift = row.metrics.get((DRIFT_TASK, "drift"))
        if drift is not None and summary["drift"]:
            drift.ci = tuple(summary["drift"]["ci"])


def _drift_pairs(rows: list[Row]) -> list[dict]:
    """Baked − prompted adherence per turn, for every adapter row sharing drift docs with a prompted base row."""
    pairs = []
    prompted_rows = [r for r in rows if r.variant.adapter is None and r.variant.system_instruction
                     and r.samples.get(DRIFT_TASK)]
    baked_rows = [r for r in rows if r.variant.adapter and not r.variant.system_instruction and r.samples.get(DRIFT_TASK)]
    for prompted in prompted_rows:
        for baked in baked_rows:
            if baked.variant.model != prompted.variant.model:
                continue
            by_turn = paired_by_turn(prompted.samples[DRIFT_TASK], baked.samples[DRIFT_TASK])
            if by_turn:
                pairs.append({"prompted": prompted, "baked": baked, "by_turn": by_turn})
    return pairs


def paired_change(metric: str, before: Row, after: Row, collection: Collection) -> Interval | None:
    """The 95% CI of (after − before) for a leaderboard metric or TASK:METRIC, paired over what both rows
    answered (docs, or conversations for drift); None when their per-doc output cannot be paired."""
    column = next((c for c in HEADLINE_COLUMNS if c.name == metric), None)
    task, name = (column.task, column.metric) if column else metric.partition(":")[::2]
    if name == "drift" and before.drift and after.drift:
        return _paired_drift(before.drift, after.drift)
    if task == MCKL_TASK and name == "quality":
        return _paired_quality(before.samples.get(task, {}), after.samples.get(task, {}))
    if task == FORGETTING_GROUP:  # the group's docs are its members' docs, pooled
        ids_old, ids_new = [], []
        for member in forgetting_members(collection, before, after):
            _, old, new = paired_values(before.samples[member], after.samples[member], name)
            ids_old += old
            ids_new += new
        return _mean_difference(ids_old, ids_new)
    _, old, new = paired_values(before.samples.get(task, {}), after.samples.get(task, {}), name)
    return _mean_difference(old, new)


def _mean_difference(old: list, new: list) -> Interval | None:
    if len(old) < 2 or not all(isinstance(v, (int, float)) for v in old + new):
        return None
    return compare_paired(old, new).difference_ci


def _paired_drift(before: dict, after: dict) -> Interval | None:
    if len(before) != 1 or set(before) != set(after):
        return None
    (old,), (new,) = before.values(), after.values()
    shared = sorted(set(old["drift_per_conversation"]) & set(new["drift_per_conversation"]))
    return _mean_difference([old["drift_per_conversation"][c] for c in shared],
                            [new["drift_per_conversation"][c] for c in shared])


def _paired_quality(before: dict[int, dict], after: dict[int, dict]) -> Interval | None:
    """Quality = 1 − Σ model KL / Σ base KL over the same answers, so (after − before) = (Σ m_before − Σ m_after) /
    Σ base KL: resampled answer by answer, the three sums together."""
    _, old, new = paired_values(before, after, "quality")
    if len(old) < 2:
        return None
    m_old, m_new, base = (np.array([pair[i] for pair in side], dtype=float)
                          for side, i in ((old, 0), (new, 0), (old, 1)))
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(base), size=(RESAMPLES, len(base)))
    sums = base[idx].sum(axis=1)
    deltas = np.where(sums > 0, (m_old[idx].sum(axis=1) - m_new[idx].sum(axis=1)) / np.where(sums > 0, sums, 1),
                      np.nan)
    if np.isnan(deltas).any():
        return None
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(deltas, [tail, 1 - tail])
    return Interval(float(low), float(high), CONFIDENCE)
