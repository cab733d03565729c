"""Cross-task forgetting, the judging half: each adapter's scores against the base model's, task by task.

A task fails for an adapter when its score drops by more than `threshold_pct`
percent of the base score (3.4% is the bound the project brief claims for
baking; treat it as the target being tested).
"""

from __future__ import annotations

from pathlib import Path



DEFAULT_THRESHOLD_PCT = 3.4


def build_report(base_model: str, adapters: list[str], tasks: list[str], scores: dict, threshold_pct: float) -> dict:
    """Compare each adapter's scores with the base model's (`scores[None]`)."""
    per_task = {}
    for task in tasks:
        base = scores[None][task]
        per_task[task] = {
            "metric": base["metric"],
            "base": {"score": base["score"], "stderr": base["stderr"]},
            "adapters": {
                adapter: _compare(base, scores[adapter][task], threshold_pct) for adapter in adapters
            },
        }
    summary = {}
    for adapter in adapters:
        drops = {task: -per_task[task]["adapters"][adapter]["relative_change_pct"] for task in tasks
                 if per_task[task]["adapters"][adapter]["relative_change_pct"] is not None}
        worst = max(drops, key=drops.get) if drops else None
        summary[adapter] = {
            "max_relative_drop_pct": drops[worst] if worst else None,
            "worst_task": worst,
            "passed": all(per_task[task]["adapters"][adapter]["passed"] for task in tasks),
        }
    return {
        "base_model": base_model,
        "adapters": adapters,
        "tasks": tasks,
        "threshold_pct": threshold_pct,
        "per_task": per_task,
        "per_adapter": summary,
        "passed": all(entry["passed"] for entry in summary.values()),
    }


def _compare(base: dict, adapted: dict, threshold_pct: float) -> dict:
    absolute = adapted["score"] - base["score"]
    # A zero base score cannot drop, so there is no relative change to judge.
    relative = 100.0 * absolute / base["score"] if base["score"] else None
    return {
        "score": adapted["score"],
        "stderr": adapted["stderr"],
        "absolute_change": absolute,
        "relative_change_pct": relative,
        "passed": relative is None or -relative <= threshold_pct,
    }


def format_summary(report: dict) -> str:
    """A plain-text table: one row per task, one column per adapter (relative change)."""
    adapters = report["adapters"]
    names = [label(a) for a in adapters]
    task_width = max(len("task"), *(len(t) for t in report["tasks"]))
    header = f"{'task':<{task_width}}  {'metric':<8} {'base ± stderr':>15}" + "".join(f"  {n:>14}" for n in names)
    lines = [header, "-" * len(header)]
    for task in report["tasks"]:
        entry = report["per_task"][task]
        base = entry["base"]
        base_text = f"{base['score']:.3f}" + ("" if base["stderr"] is None else f" ± {base['stderr']:.3f}")
        row = f"{task:<{task_width}}  {entry['metric']:<8} {base_text:>15}"
        for adapter in adapters:
            cell = entry["adapters"][adapter]
            change = "n/a" if cell["relative_change_pct"] is None else f"{cell['relative_change_pct']:+.1f}%"
            row += f"  {change + ('' if cell['passed'] else ' FAIL'):>14}"
        lines.append(row)
    lines.append("")
    for adapter, name in zip(adapters, names):
        summary = report["per_adapter"][adapter]
        drop = summary["max_relative_drop_pct"]
        drop_text = "n/a" if drop is None else f"{drop:.1f}% ({summary['worst_task']})"
        verdict = "PASS" if summary["passed"] else "FAIL"
        lines.append(f"{name}: max relative drop {drop_text}  {verdict} (threshold {report['threshold_pct']}%)")
    return "\n".join(lines)


def label(adapter: str | None) -> str:
    return "base" if adapter is None else Path(adapter).name or str(adapter)


def short_task(task: str) -> str:
    return task.removeprefix("baking_forgetting_")
