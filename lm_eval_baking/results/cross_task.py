"""The N×N cross-task matrix: each task's bake, scored 0-shot on every task, against the base model 0-shot.

    cell (baked on A, evaluated on B), A ≠ B: the change of B's score, doc by doc against the base
        model 0-shot (core.stats.compare_paired), judged against an allowed relative drop
        (default core.verdicts.MAX_FORGETTING_DROP_PCT, the bound the project brief claims for baking)
        with core.verdicts.judge.
    cell (A, A), the diagonal: the bake's gain on its own task over the base model 0-shot, the
        base model's own k-shot gain, and the share of that gain the bake keeps
        (gain / k-shot gain), each with a paired CI; judged against a least share (default
        results.settings.DEFAULT_MIN_SHARE).
        The bake re-prompted with its own k-shot context is reported beside it.

Every cell is one question in a family of N² (N(N-1) off the diagonal, N on it), so every CI
here, and every verdict, is at the Bonferroni level `bonferroni_confidence(confidence, N²)`.
A difference whose CI includes zero is never called a change (`changed` is False, and the
heatmap leaves the cell grey). No torch here: the per-doc scores come from cross_task.json.
"""

from __future__ import annotations

import math

import numpy as np

from ..core.stats import CONFIDENCE, RESAMPLES, bonferroni_confidence, compare_paired, ratio_quality_ci
from ..core.verdicts import (
    MAX_FORGETTING_DROP_PCT, Verdict, combine, docs_to_resolve, finite_ci, judge, judge_bound, refuse_impossible,
    resolve_text,
)
from ..errors import BakingError
from ..utils.text import listed, quoted
from .cross_task_record import CrossTaskRecord
from .settings import DEFAULT_MIN_SHARE, check_matrix_settings

DEFAULT_CONFIDENCE, N_BOOT = CONFIDENCE, RESAMPLES


def build_matrix(tasks: list[str], scores: dict, *, max_forgetting_drop_pct: float = MAX_FORGETTING_DROP_PCT,
                 min_share: float = DEFAULT_MIN_SHARE, confidence: float = DEFAULT_CONFIDENCE) -> dict:
    """{"cells": {baked: {evaluated: cell}}, "verdict", "level", ...} from per-doc scores.

    `scores["base"][task]["0"|"k"]` and `scores[baked][task]["0"|"k"]` are {"per_doc": [...]} in
    doc order (the same docs for every model). A bake's "k" is needed on its own task only.
    """
    check_matrix_settings(max_forgetting_drop_pct, min_share)
    level = bonferroni_confidence(confidence, len(tasks) ** 2)
    cells = {baked: {evaluated: (_diagonal(scores, baked, level, min_share) if baked == evaluated
                                 else _off_diagonal(scores, baked, evaluated, level, max_forgetting_drop_pct))
                     for evaluated in tasks} for baked in tasks}
    verdicts = [cell["verdict"] for row in cells.values() for cell in row.values()]
    overall = combine(verdicts)
    return {"tasks": tasks, "cells": cells, "verdict": overall, "max_forgetting_drop_pct": max_forgetting_drop_pct,
            "min_share": min_share, "confidence": confidence, "cell_confidence": level,
            "counts": {v.value: verdicts.count(v.value) for v in Verdict}}


def _docs(scores: dict, model: str, task: str, shots: str) -> list[float]:
    try:
        values = scores[model][task][shots]["per_doc"]
    except (KeyError, TypeError):
        what = "base model" if model == "base" else f"bake of {quoted(model)}"
        raise BakingError(f"the cross-task scores lack the {what} on {quoted(task)} at "
                          f"{'0' if shots == '0' else 'k'} shots; rerun `lm-eval-baking cross-task`") from None
    if not isinstance(values, list) or not values:
        raise BakingError(f"the cross-task scores of {quoted(model)} on {quoted(task)} are empty; rerun cross-task")
    where = f"the cross-task scores of {quoted(model)} on {quoted(task)}"
    for value in values:
        if not isinstance(value, (int, float)):
            raise BakingError(f"{where} hold {quoted(value)}, not a number; rerun `lm-eval-baking cross-task`")
        metric = scores[model][task][shots].get("metric")
        refuse_impossible(metric if isinstance(metric, str) else "score", float(value), None, where)
    return values


def _interval(ci) -> list[float] | None:
    return None if ci is None else [ci.low, ci.high]


def _off_diagonal(scores, baked, evaluated, level, max_forgetting_drop_pct) -> dict:
    base, other = _docs(scores, "base", evaluated, "0"), _docs(scores, baked, evaluated, "0")
    c = compare_paired(base, other, n_boot=N_BOOT, confidence=level)
    cell = {"kind": "other", "n": c.n, "base": c.base_mean, "baked": c.other_mean, "difference": c.difference,
            "difference_ci": _interval(c.difference_ci), "relative_change": c.relative_change,
            "relative_ci": _interval(c.relative_ci), "p": c.p_value, "changed": c.difference_ci.excludes_zero}
    if c.base_mean == 0 and all(0 <= v <= 1 for v in base + other):
        # A 0-1 score of 0 cannot drop: there is nothing to forget, whatever the bake does.
        return {**cell, "verdict": Verdict.PASS.value, "reason": "the base model scores 0: nothing to lose",
                "docs_to_resolve": None}
    j = judge(c, max_forgetting_drop_pct / 100, relative=True)
    return {**cell, "verdict": j.verdict.value, "reason": j.reason, "docs_to_resolve": j.docs_to_resolve}


def _diagonal(scores, task, level, min_share) -> dict:
    base0, basek = _docs(scores, "base", task, "0"), _docs(scores, "base", task, "k")
    bake0 = _docs(scores, task, task, "0")
    gain = compare_paired(base0, bake0, n_boot=N_BOOT, confidence=level)
    kshot = compare_paired(base0, basek, n_boot=N_BOOT, confidence=level)
    b0, bk, t0 = (np.asarray(v, dtype=float) for v in (base0, basek, bake0))
    # share = Σ(bake0 - base0) / Σ(basek - base0) = 1 - Σ(basek - bake0) / Σ(basek - base0): the paired
    # ratio bootstrap of core.stats resamples docs jointly (undefined where the k-shot gain is not positive).
    share = gain.difference / kshot.difference if kshot.difference > 0 else None
    share_ci = ratio_quality_ci(bk - t0, bk - b0, n_boot=N_BOOT, confidence=level) if share is not None else None
    cell = {"kind": "own", "n": gain.n, "base": gain.base_mean, "base_kshot": kshot.other_mean,
            "baked": gain.other_mean, "gain": gain.difference, "gain_ci": _interval(gain.difference_ci),
            "kshot_gain": kshot.difference, "kshot_gain_ci": _interval(kshot.difference_ci),
            "share": share, "share_ci": _interval(share_ci), "changed": gain.difference_ci.excludes_zero}
    own_k = scores.get(task, {}).get(task, {}).get("k")
    if own_k:
        reprompt = compare_paired(basek, _docs(scores, task, task, "k"), n_boot=N_BOOT, confidence=level)
        cell.update(baked_kshot=reprompt.other_mean, reprompt_vs_base_kshot=reprompt.difference,
                    reprompt_vs_base_kshot_ci=_interval(reprompt.difference_ci))
    if share is None or not kshot.difference_ci.excludes_zero:
        return {**cell, "verdict": Verdict.INCONCLUSIVE.value, "docs_to_resolve": None,
                "reason": "the base model shows no k-shot gain on these docs (its CI includes zero): no gain to keep"}
    if not finite_ci((share_ci.low, share_ci.high)):  # core.verdicts: an unbounded CI proves nothing
        return {**cell, "verdict": Verdict.INCONCLUSIVE.value, "docs_to_resolve": None,
                "reason": "the CI of the share kept is unbounded (the k-shot gain is near 0 in some resamples); "
                          "evaluate more docs"}
    verdict, _ = judge_bound(share, (share_ci.low, share_ci.high), "min", min_share)
    if verdict is Verdict.PASS:
        return {**cell, "verdict": verdict.value, "docs_to_resolve": None,
                "reason": f"keeps at least {share_ci.low:.0%} of the k-shot gain (least allowed {min_share:.0%})"}
    if verdict is Verdict.FAIL:
        return {**cell, "verdict": verdict.value, "docs_to_resolve": None,
                "reason": f"keeps at most {share_ci.high:.0%} of the k-shot gain (least allowed {min_share:.0%})"}
    docs = docs_to_resolve(gain.n, (share_ci.high - share_ci.low) / 2, share - min_share)
    reason = f"the share kept is {share_ci.low:.0%} to {share_ci.high:.0%}, around the least allowed {min_share:.0%}"
    return {**cell, "verdict": verdict.value, "docs_to_resolve": docs,
            "reason": reason + (f"; {resolve_text(docs)}" if docs else "")}


def judge_report(report: CrossTaskRecord, *, max_forgetting_drop_pct: float | None = None,
                 min_share: float | None = None) -> dict:
    """The matrix of a cross_task.json, recomputed from its per-doc scores (with other thresholds if given)."""
    tasks = report.tasks
    if not isinstance(tasks, list) or not tasks or not isinstance(report.scores, dict):
        raise BakingError("the cross-task report lacks its tasks or scores; rerun `lm-eval-baking cross-task`")
    matrix = report.matrix if isinstance(report.matrix, dict) else {}
    return build_matrix(tasks, report.scores,
                        max_forgetting_drop_pct=(matrix.get("max_forgetting_drop_pct", MAX_FORGETTING_DROP_PCT)
                                                 if max_forgetting_drop_pct is None else max_forgetting_drop_pct),
                        min_share=matrix.get("min_share", DEFAULT_MIN_SHARE) if min_share is None else min_share,
                        confidence=matrix.get("confidence", DEFAULT_CONFIDENCE))


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def _ci_points(ci) -> str:
    return "[−∞, ∞]" if ci is None or not all(map(math.isfinite, ci)) else f"[{_points(ci[0])}, {_points(ci[1])}]"


def _percent(value) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _ci_percent(ci) -> str:
    if ci is None:
        return "n/a"
    low, high = ("−∞" if not math.isfinite(ci[0]) else f"{ci[0]:.0%}", "∞" if not math.isfinite(ci[1]) else f"{ci[1]:.0%}")
    return f"[{low}, {high}]"


def own_task_table(report: CrossTaskRecord) -> tuple[list[str], list[list[str]]]:
    """One row per task: base 0/k-shot, baked 0/k-shot, gain and share kept, each difference with its CI."""
    matrix = report.matrix
    header = ["task", "n", "base 0-shot", "base k-shot", "k-shot gain [CI]", "baked 0-shot", "gain [CI]",
              "share kept [CI]", "baked k-shot", "vs base k-shot [CI]", "verdict"]
    cells = []
    for task in matrix["tasks"]:
        c = matrix["cells"][task][task]
        k = report.num_fewshot.get(task, "k")
        reprompt = ("n/a", "n/a") if "baked_kshot" not in c else (
            f"{c['baked_kshot']:.3f}", f"{_points(c['reprompt_vs_base_kshot'])} {_ci_points(c['reprompt_vs_base_kshot_ci'])}")
        cells.append([f"{task} (k={k})", str(c["n"]), f"{c['base']:.3f}", f"{c['base_kshot']:.3f}",
                      f"{_points(c['kshot_gain'])} {_ci_points(c['kshot_gain_ci'])}", f"{c['baked']:.3f}",
                      f"{_points(c['gain'])} {_ci_points(c['gain_ci'])}",
                      f"{_percent(c['share'])} {_ci_percent(c['share_ci'])}", *reprompt, c["verdict"]])
    return header, cells


def matrix_table(report: CrossTaskRecord) -> tuple[list[str], list[list[str]]]:
    """Rows: the task baked; columns: the task evaluated 0-shot. Off the diagonal: change in points vs base 0-shot."""
    matrix = report.matrix
    tasks = matrix["tasks"]
    header = ["baked \\ evaluated"] + tasks
    cells = []
    for baked in tasks:
        row = [baked]
        for evaluated in tasks:
            c = matrix["cells"][baked][evaluated]
            if baked == evaluated:
                text = f"gain {_points(c['gain'])} {_ci_points(c['gain_ci'])}, kept {_percent(c['share'])}"
            elif c["changed"]:
                text = f"{_points(c['difference'])} {_ci_points(c['difference_ci'])}"
            else:
                text = f"no change shown {_ci_points(c['difference_ci'])}"
            row.append(f"{text} {c['verdict']}")
        cells.append(row)
    return header, cells


def format_summary(report: CrossTaskRecord) -> str:
    """Plain text for the terminal: the own-task table, the matrix and the verdict."""
    matrix = report.matrix
    lines = [f"Cross-task matrix on {report.base_model} ({report.form} form), "
             f"CIs at {matrix['cell_confidence']:.2%} (Bonferroni over {len(matrix['tasks']) ** 2} cells); "
             "scores and changes in points (exact match × 100)", ""]
    for header, cells in (own_task_table(report), matrix_table(report)):
        widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(header)]
        lines += ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
                  "  ".join("-" * w for w in widths)]
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells] + [""]
    unresolved = [(b, e, c) for b, row in matrix["cells"].items() for e, c in row.items()
                  if c["verdict"] != Verdict.PASS.value]
    for baked, evaluated, c in unresolved:
        lines.append(f"{c['verdict']}: bake of {baked} on {evaluated}: {c['reason']}")
    lines.append(f"verdict: {matrix['verdict']} ({listed(f'{v} {n}' for v, n in matrix['counts'].items())}; "
                 f"allowed drop {matrix['max_forgetting_drop_pct']}%, least share kept {matrix['min_share']:.0%})")
    return "\n".join(lines)
