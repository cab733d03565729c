"""The report's plots (matplotlib, rendered to PNG bytes): KL per epoch, pursuit rounds, drift, forgetting."""

from __future__ import annotations

import io
import math

from ..artifacts.bake_dir import BakeRecord
from ..artifacts.records import PursuitRecord
from ..core.verdicts import Verdict
from ..utils.text import model_label
from .collect import display_path
from .cross_task_record import CrossTaskRecord
from .forgetting import ForgettingRecord, short_task
from .results_files import is_number
from .rows import Collection, Row, Skipped


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=110)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def plot_kl_per_epoch(bakes: list[tuple[str, BakeRecord]]) -> bytes | None:
    """Held-out KL per answer token by epoch; epoch 0 is the unprompted base."""
    series = []
    for directory, record in bakes:
        kl = record.kl if isinstance(record.kl, dict) else None
        try:
            points = [kl["unprompted_base"]] + [e["heldout_kl"] for e in kl["per_epoch"]]
            series.append((display_path(directory), [p["per_token"] for p in points],
                           [p["per_token_stderr"] for p in points]))
        except (KeyError, TypeError):
            continue
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), layout="constrained")
    for label, values, errors in series:
        ax.errorbar(range(len(values)), values, yerr=errors, marker="o", capsize=3, label=label)
    ax.set_xlabel("epoch (0 = unprompted base)")
    ax.set_ylabel("held-out KL / token")
    ax.set_title("KL(prompted base ‖ model) per epoch", fontsize=10)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_pursuit(pursuits: list[tuple[str, PursuitRecord]]) -> bytes | None:
    usable = [(d, r) for d, r in pursuits if r.rounds]
    if not usable:
        return None
    plt = _pyplot()
    fig, (score_ax, kl_ax) = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
    for directory, record in usable:
        rounds = record.rounds
        name = display_path(directory)
        xs = [r["round"] for r in rounds]
        score_ax.plot(xs, [r.get("score") for r in rounds], marker="o", label=f"{name}")
        reprompted = [(r["round"], r.get("reprompted_score")) for r in rounds if is_number(r.get("reprompted_score"))]
        if reprompted:
            score_ax.plot(*zip(*reprompted), marker="s", linestyle="--", label=f"{name} + prompt again")
        kls = [(r["round"], r["heldout_kl"]) for r in rounds if is_number(r.get("heldout_kl"))]
        if kls:
            kl_ax.plot(*zip(*kls), marker="o", label=name)
    evaluators = {str((r.settings or {}).get("evaluator", "score")) for _, r in usable}
    score_ax.set(xlabel="pursuit round (0 = base)", ylabel=" / ".join(sorted(evaluators)))
    score_ax.set_title("score per round (higher is better)", fontsize=10)
    kl_ax.set(xlabel="pursuit round", ylabel="held-out KL / token")
    kl_ax.set_title("each round's KL to its teacher", fontsize=10)
    for ax in (score_ax, kl_ax):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7)
    return _png(fig)


def plot_drift(rows: list[Row]) -> bytes | None:
    """Adherence by turn, with the 95% CI over conversations as a band where one was computed."""
    curves = [(f"{r.label} · {persona}" if len(r.drift) > 1 else r.label, summary["turns"])
              for r in rows if r.drift for persona, summary in r.drift.items()]
    curves += [(r.label, {t: {"value": v, "ci": [v, v]} for t, v in r.drift_curve.items()})
               for r in rows if not r.drift and r.drift_curve]
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), layout="constrained")
    for label, turns in curves:
        xs = sorted(turns)
        ys = [turns[t]["value"] for t in xs]
        line, = ax.plot(xs, ys, marker="o", label=label)
        low = [turns[t]["ci"][0] for t in xs]
        high = [turns[t]["ci"][1] for t in xs]
        if all(math.isfinite(v) for v in low + high) and low != high:
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xlabel("agent turn the probe follows")
    ax.set_ylabel("persona adherence (95% CI over conversations)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Persona drift by turn (baking_persona_drift)", fontsize=10)
    ax.legend(fontsize=7)
    return _png(fig)


def plot_forgetting(collection: Collection, max_forgetting_drop_pct: float) -> list[tuple[str, bytes]]:
    """One heatmap per base model: each adapter's paired change per forgetting task (lm_eval runs with
    --log_samples, or `lm-eval-baking forgetting` reports)."""
    images = []
    for base in (r for r in collection.rows if r.variant.is_plain_base):
        judged = [(r.label, r.forgetting) for r in collection.rows
                  if r.variant.model == base.variant.model and r.forgetting]
        if not judged:
            continue
        try:
            images.append((f"paired against {base.label}", forgetting_heatmap(judged, max_forgetting_drop_pct)))
        except (KeyError, TypeError, ValueError) as e:
            collection.skipped.append(Skipped(base.label, f"no forgetting heatmap ({e})"))
    return images


def forgetting_heatmap(judged: list[tuple[str, dict]], max_forgetting_drop_pct: float) -> bytes:
    """Relative change (%) per adapter and task, painted only where its paired CI excludes zero."""
    import numpy as np

    plt = _pyplot()
    tasks = sorted({t for _, j in judged for t in j["per_task"]})
    columns = tasks + ["all docs"]
    cells = [[j["per_task"].get(t) for t in tasks] + [j["group"]] for _, j in judged]
    values = np.array([[_painted(c) for c in row] for row in cells], dtype=float).reshape(len(judged), len(columns))
    shown = np.abs(values[np.isfinite(values)])
    span = max(max_forgetting_drop_pct * 2, float(shown.max()) if shown.size else 0.0)
    fig, ax = plt.subplots(figsize=(2.4 + 1.15 * len(columns), 3.6 + 0.55 * len(judged)), layout="constrained")
    image = ax.imshow(np.nan_to_num(values, nan=0.0), cmap="RdBu", vmin=-span, vmax=span, aspect="auto")
    ax.set_xticks(range(len(columns)), [short_task(t) for t in columns], rotation=45, ha="right")
    ax.set_yticks(range(len(judged)), [label.replace("/", "›") for label, _ in judged])
    for row, row_cells in enumerate(cells):
        for col, cell in enumerate(row_cells):
            value = values[row, col]
            if cell is None:
                text = "n/a"
            else:
                change = "n.s." if not cell["changed"] else f"{value:+.1f}%"
                text = f"{change}\n{cell['verdict'][:5].lower()}"
            dark = math.isfinite(value) and abs(value) > 0.6 * span
            ax.text(col, row, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    fig.colorbar(image, ax=ax, label="paired change vs base (%), 0 where the CI includes 0")
    ax.set_title(f"Cross-task forgetting, paired per doc (allowed drop {max_forgetting_drop_pct}%)", fontsize=10)
    return _png(fig)


def _painted(cell: dict | None) -> float:
    """The cell's relative change in %, 0 when its CI includes zero (not a change), NaN when missing."""
    if cell is None or cell["comparison"]["relative_change"] is None:
        return math.nan
    return 100 * cell["comparison"]["relative_change"] if cell["changed"] else 0.0


def report_heatmap(report: ForgettingRecord) -> bytes:
    """The heatmap of a forgetting.json written by `lm-eval-baking forgetting`."""
    judged = [(model_label(a), report.per_adapter[a]) for a in report.adapters]
    return forgetting_heatmap(judged, report.max_forgetting_drop_pct)


def cross_task_heatmap(report: CrossTaskRecord) -> bytes:
    """The N×N matrix in points (exact match × 100): rows baked, columns evaluated 0-shot.

    Off the diagonal: the change against the base model 0-shot; on it: the bake's gain, with the
    share of the k-shot gain kept. A cell whose CI includes zero stays grey: not painted as a
    change. Each cell carries its verdict (PASS / FAIL / ?).
    """
    import numpy as np

    plt = _pyplot()
    matrix = report.matrix
    tasks = matrix["tasks"]
    n = len(tasks)
    values = np.full((n, n), np.nan)
    for row, baked in enumerate(tasks):
        for col, evaluated in enumerate(tasks):
            cell = matrix["cells"][baked][evaluated]
            if cell["changed"]:
                values[row, col] = 100 * (cell["gain"] if baked == evaluated else cell["difference"])
    span = max(5.0, float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 0.0)
    fig, ax = plt.subplots(figsize=(2.4 + 1.7 * n, 2.2 + 1.0 * n), layout="constrained")
    ax.imshow(np.full((n, n), 0.15), cmap="Greys", vmin=0, vmax=1, aspect="auto")  # grey: no change shown
    image = ax.imshow(np.ma.masked_invalid(values), cmap="RdBu", vmin=-span, vmax=span, aspect="auto")
    names = [short_fewshot_task(t) for t in tasks]
    ax.set_xticks(range(n), names, rotation=30, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("evaluated 0-shot")
    ax.set_ylabel("baked with its k-shot prompt")
    mark = {**{v: v.value for v in Verdict}, Verdict.INCONCLUSIVE: "?"}
    for row, baked in enumerate(tasks):
        for col, evaluated in enumerate(tasks):
            cell = matrix["cells"][baked][evaluated]
            change = cell["gain"] if baked == evaluated else cell["difference"]
            text = f"{100 * change:+.1f}" if cell["changed"] else "n.s."
            if baked == evaluated and cell.get("share") is not None:
                text += f"\nkept {cell['share']:.0%}"
            ax.text(col, row, f"{text}\n{mark[cell['verdict']]}", ha="center", va="center", fontsize=8,
                    color="white" if cell["changed"] and abs(100 * change) > 0.6 * span else "black")
    fig.colorbar(image, ax=ax, label="change vs base 0-shot (points)")
    ax.set_title(f"Cross-task matrix ({matrix['cell_confidence']:.1%} CIs; fail: drop > {matrix['max_forgetting_drop_pct']}%)",
                 fontsize=9)
    return _png(fig)


def short_fewshot_task(task: str) -> str:
    return task.removeprefix("baking_fewshot_")
