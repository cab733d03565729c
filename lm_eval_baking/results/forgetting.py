"""Cross-task forgetting, the judging half: each adapter against the base model, doc by doc.

The base model and an adapter answer the same docs, so every comparison is
paired (`core.stats`): per task, McNemar's exact test for 0/1 scores and a
paired bootstrap CI of the change, absolute and relative; for the whole group,
the same pooled over every doc (each doc weighs the same), which is where a
bound of a few percent can be resolved.

Verdicts against an allowed relative drop (default `core.verdicts.MAX_FORGETTING_DROP_PCT`, the bound
the brief claims for baking: a target under test, not a fact):

- PASS: even the worst end of the CI is within the allowed drop;
- FAIL: even the best end is beyond it (a drop beyond the bound is established);
- INCONCLUSIVE: anything else, with the number of docs that would resolve it.

Multiplicity: per-task verdicts use Bonferroni-level CIs (1 − 0.05/m for m
tasks), so noise makes a false FAIL among all tasks at most 5% likely; the
"did anything change" p-values are Holm-adjusted across tasks; the pooled
group verdict uses the plain 95% CI. An adapter FAILs when its group FAILs or
any task FAILs, PASSes when its group PASSes and no task FAILs, and is
INCONCLUSIVE otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import ClassVar

from ..artifacts.records import JsonRecord
from ..constants import FORGETTING_FORMAT, FORGETTING_FORMAT_VERSION, FORGETTING_RECORD
from ..core.stats import CONFIDENCE, RESAMPLES, bonferroni_confidence, compare_paired, docs_needed, holm
from ..core.verdicts import Verdict, combine, judge
from ..utils.text import model_label


@dataclass
class ForgettingRecord(JsonRecord):
    """forgetting.json, written by `lm-eval-baking forgetting` (workflows/forgetting.py), read by the report and
    by bench/ re-judging: every doc's score, each adapter's paired change per task and pooled, its verdict."""

    FILE: ClassVar[str] = FORGETTING_RECORD
    FORMAT: ClassVar[str] = FORGETTING_FORMAT
    VERSION: ClassVar[int] = FORGETTING_FORMAT_VERSION
    KIND: ClassVar[str] = "forgetting report"
    FIX: ClassVar[str] = "rerun `lm-eval-baking forgetting`"
    RENAMED: ClassVar[dict[str, str]] = {"threshold_pct": "max_forgetting_drop_pct"}  # its name before issue 26

    base_model: str
    adapters: list[str]
    tasks: list[str]
    max_forgetting_drop_pct: float
    per_doc: dict
    """{"base" | adapter: {task: {doc_id (a string): score}}}: what every verdict is judged again from."""
    per_adapter: dict = field(default_factory=dict)
    """{adapter: judge_adapter's dict}."""
    verdict: str | None = None
    passed: bool = False
    metrics: dict = field(default_factory=dict)
    """{task: the lm_eval metric scored}."""
    method: str | None = None
    base: dict = field(default_factory=dict)
    """{task: the base model's mean score}."""
    limit: int | float | None = None
    device: str | None = None
    apply_chat_template: bool | None = None
    base_reused: list[str] = field(default_factory=list)
    """Tasks whose base-model scores came from the base-model store (workflows/base_reuse.py)."""
    extra: dict = field(default_factory=dict)


def paired_docs(base: dict[int, float], other: dict[int, float]) -> tuple[list[float], list[float]]:
    """The scores of the docs both runs answered, in doc order."""
    shared = sorted(set(base) & set(other))
    return [base[d] for d in shared], [other[d] for d in shared]


def judge_adapter(base: dict[str, dict[int, float]], other: dict[str, dict[int, float]],
                  max_forgetting_drop_pct: float, *,
                  seed: int = 0) -> dict:
    """Per-task and pooled paired comparisons of one adapter's per-doc scores against the base model's."""
    tasks = [t for t in base if t in other and paired_docs(base[t], other[t])[0]]
    threshold = max_forgetting_drop_pct / 100.0
    per_task_confidence = bonferroni_confidence(CONFIDENCE, max(1, len(tasks)))
    per_task, pooled_base, pooled_other = {}, [], []
    for task in tasks:
        a, b = paired_docs(base[task], other[task])
        pooled_base += a
        pooled_other += b
        comparison = compare_paired(a, b, n_boot=RESAMPLES, seed=seed, confidence=per_task_confidence)
        per_task[task] = _cell(comparison, threshold)
    for task, p in zip(tasks, holm([per_task[t]["comparison"]["p_value"] for t in tasks])):
        per_task[task]["p_holm"] = p
    group = (_cell(compare_paired(pooled_base, pooled_other, n_boot=RESAMPLES, seed=seed, confidence=CONFIDENCE),
                   threshold) if tasks else None)
    if group is not None:
        sd = group["comparison"]["sd_difference"]
        base_mean = group["comparison"]["base_mean"]
        group["docs_needed_for_threshold"] = docs_needed(sd, threshold * base_mean) if base_mean else None
    # FAIL when the group or any task FAILs on its own, else the group's verdict; no group is INCONCLUSIVE.
    verdict = combine(([group["verdict"]] if group else []) +
                      [per_task[t]["verdict"] for t in tasks if per_task[t]["verdict"] == Verdict.FAIL.value])
    return {"per_task": per_task, "group": group, "verdict": verdict,
            "failed_tasks": [t for t in tasks if per_task[t]["verdict"] == Verdict.FAIL.value]}


def _cell(comparison, threshold: float) -> dict:
    judgement = judge(comparison, threshold, relative=True)
    mdd = comparison.minimum_detectable_difference()
    return {
        "comparison": comparison.to_dict(),
        "verdict": judgement.verdict.value,
        "judgement": judgement.to_dict(),
        "changed": comparison.difference_ci.excludes_zero,
        "minimum_detectable_drop": mdd,
        "minimum_detectable_drop_pct": 100 * mdd / comparison.base_mean if comparison.base_mean else None,
    }


def build_report(base_model: str, adapters: list[str], tasks: list[str], per_doc: dict, max_forgetting_drop_pct: float,
                 *, metrics: dict[str, str] | None = None) -> ForgettingRecord:
    """forgetting.json: `per_doc[None]` is the base model's {task: {doc_id: score}}, `per_doc[adapter]` each adapter's."""
    per_adapter = {adapter: judge_adapter(per_doc[None], per_doc[adapter], max_forgetting_drop_pct)
                   for adapter in adapters}
    verdict = combine([per_adapter[a]["verdict"] for a in adapters])
    return ForgettingRecord(
        base_model=base_model,
        adapters=adapters,
        tasks=tasks,
        metrics=metrics or {},
        max_forgetting_drop_pct=max_forgetting_drop_pct,
        method="paired per doc: McNemar exact (0/1 scores) or sign-flip permutation p; percentile bootstrap CIs "
               f"({RESAMPLES} resamples), for 0/1 scores widened to hold the exact conditional (Clopper-Pearson) "
               "interval; per-task verdicts at Bonferroni-level CIs, Holm-adjusted p; group pooled over all docs "
               "at 95%",
        base={task: _mean(per_doc[None][task]) for task in tasks},
        per_adapter=per_adapter,
        verdict=verdict,
        passed=verdict == Verdict.PASS.value,
        per_doc={"base" if adapter is None else adapter: {task: {str(d): s for d, s in sorted(scores.items())}
                                                          for task, scores in per_doc[adapter].items()}
                 for adapter in [None, *adapters]},
    )


def stored_per_doc(report: ForgettingRecord) -> dict:
    """A forgetting.json's per-doc scores as `build_report` takes them: the base model under None."""
    return {None if name == "base" else name: {task: {int(d): v for d, v in scores.items()}
                                               for task, scores in by_task.items()}
            for name, by_task in report.per_doc.items()}


def rebuild_report(report: ForgettingRecord) -> ForgettingRecord:
    """A forgetting.json judged again from its own per-doc scores with today's statistics (no model runs)."""
    rebuilt = build_report(report.base_model, report.adapters, report.tasks, stored_per_doc(report),
                           report.max_forgetting_drop_pct, metrics=report.metrics)
    return replace(rebuilt, limit=report.limit, device=report.device,
                   apply_chat_template=report.apply_chat_template, extra=report.extra)


def _mean(scores: dict[int, float]) -> float:
    return sum(scores.values()) / len(scores) if scores else math.nan


def change_text(cell: dict | None) -> str:
    """'−5.1% [−9.0, −1.2] FAIL', or 'no change (CI −4.0, +3.1)' when the CI includes zero."""
    if cell is None:
        return "n/a"
    comparison = cell["comparison"]
    rel, ci = comparison["relative_change"], comparison["relative_ci"]
    if rel is None or ci is None:
        return "n/a (base score 0)"
    bounds = f"{100 * ci['low']:+.1f}, {100 * ci['high']:+.1f}"
    if not cell["changed"]:
        return f"no change (CI {bounds}) {cell['verdict']}"
    return f"{100 * rel:+.1f}% [{bounds}] {cell['verdict']}"


def format_summary(report: ForgettingRecord) -> str:
    """A plain-text table: one row per task, one column per adapter, then each adapter's group verdict."""
    adapters = report.adapters
    names = [model_label(a) for a in adapters]
    width = max(len("task"), *(len(short_task(t)) for t in report.tasks))
    cols = [max(30, len(n)) for n in names]
    header = f"{'task':<{width}}  {'base':>6}" + "".join(f"  {n:>{w}}" for n, w in zip(names, cols))
    lines = [header, "-" * len(header)]
    for task in report.tasks:
        row = f"{short_task(task):<{width}}  {report.base[task]:>6.3f}"
        for adapter, w in zip(adapters, cols):
            row += f"  {change_text(report.per_adapter[adapter]['per_task'].get(task)):>{w}}"
        lines.append(row)
    lines.append("")
    for adapter, name in zip(adapters, names):
        result = report.per_adapter[adapter]
        group = result["group"]
        needed = group.get("docs_needed_for_threshold") if group else None
        need_text = f"; a {report.max_forgetting_drop_pct}% drop needs about {needed} docs to be detected" if needed else ""
        lines.append(f"{name}: all docs pooled (n={group['comparison']['n'] if group else 0}) "
                     f"{change_text(group)}; verdict {result['verdict']} at a {report.max_forgetting_drop_pct}% "
                     f"allowed drop{need_text}")
    return "\n".join(lines)


def short_task(task: str) -> str:
    return task.removeprefix("baking_forgetting_")
