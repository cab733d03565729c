"""Cross-task forgetting: does a baked adapter break tasks it was not baked for?

Runs lm_eval on the base model and on the base model + each adapter, task by
task, and compares scores. A task fails for an adapter when its score drops by
more than `threshold_pct` percent of the base score (3.4% is the bound the
project brief claims for baking; treat it as the target being tested).

Writes `forgetting.json` (all numbers) and `forgetting.png` (a heatmap of the
relative change, adapters x tasks) into the output folder.
"""

from __future__ import annotations

import argparse
import difflib
import os
import tempfile
from pathlib import Path

from . import models
from .errors import BakingError
from .io import write_json
from .tasks import tasks_path

DEFAULT_TASKS = ["baking_forgetting"]
DEFAULT_THRESHOLD_PCT = 3.4
DEFAULT_BATCH_SIZE = 16
# The first of these that a task reports is the one compared; otherwise the
# first metric it marks higher-is-better.
PREFERRED_METRICS = ("acc", "exact_match", "acc_norm")


def forgetting_matrix(
    base_model: str,
    adapters: list[str],
    tasks: list[str],
    output_dir: str | os.PathLike,
    threshold_pct: float = DEFAULT_THRESHOLD_PCT,
    limit: int | float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "cpu",
    apply_chat_template: bool = False,
    progress: bool = True,
) -> dict:
    """Evaluate base and adapters on every task; write and return the report.

    `tasks` may name our tasks/groups (e.g. `baking_forgetting`) or any lm_eval
    task; groups are expanded so every leaf task gets its own column (each leaf
    runs with its own config, so per-task overrides written inside a group
    YAML, such as num_fewshot, are not applied).
    """
    from tqdm.auto import tqdm

    base_model = models.resolve_model(base_model)
    adapters = [str(adapter) for adapter in adapters]
    for adapter in adapters:
        _check_adapter(adapter, base_model)
    output_dir = _writable_dir(output_dir)  # fail now, not after an hour of evaluation
    task_manager = task_manager_for(tasks)
    leaf_tasks = expand_tasks(task_manager, tasks)

    runs = [None, *adapters]  # None is the base model without an adapter
    scores: dict[str | None, dict[str, dict]] = {run: {} for run in runs}
    with tqdm(total=len(runs) * len(leaf_tasks), desc="forgetting (model x task)", disable=not progress) as bar:
        for adapter in runs:
            lm = _load_lm(base_model, adapter, batch_size, device)
            for task in leaf_tasks:
                bar.set_postfix_str(f"{_label(adapter)} / {task}")
                scores[adapter][task] = _evaluate(lm, task, task_manager, limit, apply_chat_template)
                bar.update()
            del lm  # free this model before the next one loads

    report = build_report(base_model, adapters, leaf_tasks, scores, threshold_pct)
    report.update(limit=limit, device=device, apply_chat_template=apply_chat_template)
    write_json(output_dir / "forgetting.json", report)
    write_heatmap(report, output_dir / "forgetting.png")
    return report


def task_manager_for(names: list[str]):
    """A TaskManager that knows `names`: ours alone when that suffices.

    Indexing lm_eval's own ~15k task configs takes tens of seconds, so it is
    only done when a requested name is not one of ours.
    """
    from lm_eval.tasks import TaskManager

    ours = TaskManager(include_path=str(tasks_path()), include_defaults=False)
    if set(names) <= set(ours.all_tasks):
        return ours
    return TaskManager(include_path=str(tasks_path()))


def expand_tasks(task_manager, names: list[str]) -> list[str]:
    """Leaf task names for the requested tasks/groups; unknown names are a BakingError.

    Loading also builds every dataset, so broken data fails here, before any
    model time is spent.
    """
    known = set(task_manager.all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "see `lm_eval ls tasks`"
            raise BakingError(f"unknown lm_eval task '{name}'; {hint}")
    return list(task_manager.load(list(names))["tasks"])


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


def write_heatmap(report: dict, path: str | os.PathLike) -> None:
    """Relative change (%) per adapter and task; failing cells are marked with '!'."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot
    import matplotlib.pyplot as plt
    import numpy as np

    tasks, adapters = report["tasks"], report["adapters"]
    cells = [[report["per_task"][t]["adapters"][a] for t in tasks] for a in adapters]
    values = np.array([[c["relative_change_pct"] if c["relative_change_pct"] is not None else np.nan
                        for c in row] for row in cells], dtype=float).reshape(len(adapters), len(tasks))
    span = max(report["threshold_pct"] * 2, np.nanmax(np.abs(values)) if np.isfinite(values).any() else 0.0)

    # The rotated task names take ~2 inches; the rest keeps a one-adapter colour bar tall enough for its label.
    fig, ax = plt.subplots(figsize=(2.0 + 1.1 * len(tasks), 3.4 + 0.5 * len(adapters)), layout="constrained")
    image = ax.imshow(values, cmap="RdBu", vmin=-span, vmax=span, aspect="auto")
    ax.set_xticks(range(len(tasks)), [_short_task(t) for t in tasks], rotation=45, ha="right")
    ax.set_yticks(range(len(adapters)), [_label(a) for a in adapters])
    for row, adapter_cells in enumerate(cells):
        for col, cell in enumerate(adapter_cells):
            value = cell["relative_change_pct"]
            text = "n/a" if value is None else f"{value:+.1f}%" + ("" if cell["passed"] else " !")
            dark_cell = value is not None and abs(value) > 0.6 * span
            ax.text(col, row, text, ha="center", va="center", fontsize=8, color="white" if dark_cell else "black")
    fig.colorbar(image, ax=ax, label="change vs base (%)")
    ax.set_title(f"Cross-task forgetting (fail: drop > {report['threshold_pct']}%)", fontsize=10)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)


def format_summary(report: dict) -> str:
    """A plain-text table: one row per task, one column per adapter (relative change)."""
    adapters = report["adapters"]
    names = [_label(a) for a in adapters]
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


def add_forgetting_command(subparsers) -> argparse.ArgumentParser:
    """Register `lm-eval-baking forgetting`; its run returns 1 when an adapter fails."""
    parser = subparsers.add_parser("forgetting", help="measure cross-task forgetting of baked adapters")
    parser.add_argument("--model", default=models.DEFAULT_MODEL,
                        help="base model the adapters were baked on: 'default', a HF id or a directory")
    parser.add_argument("--adapters", nargs="+", required=True, metavar="DIR", help="PEFT adapter directories")
    parser.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS,
                        help=f"lm_eval tasks or groups (default: {' '.join(DEFAULT_TASKS)})")
    parser.add_argument("--output", "-o", type=Path, required=True, help="folder for forgetting.json and forgetting.png")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD_PCT,
                        help=f"largest allowed relative drop in percent (default: {DEFAULT_THRESHOLD_PCT})")
    parser.add_argument("--limit", type=_limit, default=None,
                        help="docs per task: a count, or a fraction below 1 (for quick checks only)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"(default: {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    parser.add_argument("--apply-chat-template", action="store_true", help="score prompts inside the chat template")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_run_forgetting)
    return parser


def _run_forgetting(args) -> int:
    report = forgetting_matrix(
        args.model, args.adapters, args.tasks, args.output,
        threshold_pct=args.threshold, limit=args.limit, batch_size=args.batch_size,
        device=args.device, apply_chat_template=args.apply_chat_template, progress=not args.quiet,
    )
    print(format_summary(report))
    print(f"\nWrote {Path(args.output) / 'forgetting.json'} and {Path(args.output) / 'forgetting.png'}")
    return 0 if report["passed"] else 1


def _limit(text: str) -> int | float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return int(value) if value >= 1 else value


def _writable_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BakingError(f"cannot create {path} ({e.strerror}); choose a writable --output") from None
    if not os.access(path, os.W_OK):
        raise BakingError(f"{path} is not writable; choose a writable --output")
    return path


def _check_adapter(adapter: str, base_model: str) -> None:
    """The one adapter check (safetensors only, baked on this base): HFLM loads peft= without asking."""
    from .safety import check_adapter

    check_adapter(adapter, base_model=base_model)


def _load_lm(base_model: str, adapter: str | None, batch_size: int, device: str):
    from lm_eval.models.huggingface import HFLM

    try:
        return HFLM(pretrained=base_model, peft=adapter, batch_size=batch_size, device=device)
    except (OSError, ValueError) as e:
        what = f"adapter {adapter} on {base_model}" if adapter else f"model {base_model}"
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BakingError(f"cannot load {what} ({first_line[:160]}); check that the adapter was baked on this base model") from None


def _evaluate(lm, task: str, task_manager, limit, apply_chat_template: bool) -> dict:
    import lm_eval

    output = lm_eval.simple_evaluate(
        model=lm, tasks=[task], task_manager=task_manager, limit=limit,
        apply_chat_template=apply_chat_template, log_samples=False,
    )
    return _headline_score(task, output["results"][task], output["higher_is_better"].get(task, {}))


def _headline_score(task: str, results: dict, higher_is_better: dict) -> dict:
    """Pick the metric to compare: `results` keys look like 'acc,none' / 'acc_stderr,none'."""
    by_metric = {}
    for key, value in results.items():
        metric, _, _filter = key.partition(",")
        if _filter and not metric.endswith("_stderr") and isinstance(value, (int, float)):
            by_metric.setdefault(metric, (key, value))
    candidates = [m for m in PREFERRED_METRICS if m in by_metric]
    candidates += [m for m in by_metric if higher_is_better.get(m)]
    if not candidates:
        raise BakingError(f"task '{task}' reports no higher-is-better metric to compare; pick another task")
    metric = candidates[0]
    key, score = by_metric[metric]
    stderr = results.get(key.replace(",", "_stderr,", 1))
    return {"metric": metric, "score": float(score), "stderr": stderr if isinstance(stderr, (int, float)) else None}


def _label(adapter: str | None) -> str:
    return "base" if adapter is None else Path(adapter).name or str(adapter)


def _short_task(task: str) -> str:
    return task.removeprefix("baking_forgetting_")
