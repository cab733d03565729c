"""The report's plots (matplotlib, rendered to PNG bytes): KL per epoch, pursuit rounds, drift, forgetting."""

from __future__ import annotations

import io

from .collect import display_path
from .forgetting import build_report, label as adapter_label, short_task
from .results_files import is_number
from .rows import FORGETTING_GROUP, FORGETTING_METRIC, Collection, Row, Skipped


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


def plot_kl_per_epoch(bakes: list[tuple[str, dict]]) -> bytes | None:
    """Held-out KL per answer token by epoch; epoch 0 is the unprompted base."""
    series = []
    for directory, record in bakes:
        kl = record.get("kl") if isinstance(record.get("kl"), dict) else None
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


def plot_pursuit(pursuits: list[tuple[str, dict]]) -> bytes | None:
    usable = [(d, r) for d, r in pursuits if r.get("rounds")]
    if not usable:
        return None
    plt = _pyplot()
    fig, (score_ax, kl_ax) = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
    for directory, record in usable:
        rounds = record["rounds"]
        name = display_path(directory)
        xs = [r["round"] for r in rounds]
        score_ax.plot(xs, [r.get("score") for r in rounds], marker="o", label=f"{name}")
        reprompted = [(r["round"], r.get("reprompted_score")) for r in rounds if is_number(r.get("reprompted_score"))]
        if reprompted:
            score_ax.plot(*zip(*reprompted), marker="s", linestyle="--", label=f"{name} + prompt again")
        kls = [(r["round"], r["heldout_kl"]) for r in rounds if is_number(r.get("heldout_kl"))]
        if kls:
            kl_ax.plot(*zip(*kls), marker="o", label=name)
    evaluators = {str((r.get("settings") or {}).get("evaluator", "score")) for _, r in usable}
    score_ax.set(xlabel="pursuit round (0 = base)", ylabel=" / ".join(sorted(evaluators)))
    score_ax.set_title("score per round (higher is better)", fontsize=10)
    kl_ax.set(xlabel="pursuit round", ylabel="held-out KL / token")
    kl_ax.set_title("each round's KL to its teacher", fontsize=10)
    for ax in (score_ax, kl_ax):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7)
    return _png(fig)


def plot_drift(rows: list[Row]) -> bytes | None:
    curves = [(r.label, r.drift_curve) for r in rows if r.drift_curve]
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), layout="constrained")
    for label, curve in curves:
        ax.plot(list(curve), list(curve.values()), marker="o", label=label)
    ax.set_xlabel("agent turn the probe follows")
    ax.set_ylabel("persona adherence")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Persona drift by turn (baking_persona_drift)", fontsize=10)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_forgetting(collection: Collection, threshold_pct: float) -> list[tuple[str, bytes]]:
    """Heatmaps of relative change per forgetting task: from lm_eval runs, and per forgetting.json."""
    reports = []
    members = collection.subtasks.get(FORGETTING_GROUP, [])
    for base in (r for r in collection.rows if r.variant.is_plain_base):
        tasks = [t for t in members if (t, FORGETTING_METRIC) in base.metrics]
        others = [r for r in collection.rows if r.variant.model == base.variant.model and r is not base
                  and all((t, FORGETTING_METRIC) in r.metrics for t in tasks)]
        if not tasks or not others:
            continue
        scores = {None: _scores(base, tasks)}
        # The heatmap labels rows with Path(name).name, so keep '/' out of the names.
        names = [r.label.replace("/", "›") for r in others]
        scores.update({name: _scores(r, tasks) for name, r in zip(names, others)})
        report = build_report(base.variant.model, names, tasks, scores, threshold_pct)
        reports.append((f"lm_eval runs on {base.label}", report))
    reports += [(display_path(d) + "/forgetting.json", r) for d, r in collection.forgetting_reports]
    images = []
    for title, report in reports:
        try:
            images.append((title, forgetting_heatmap(report)))
        except (KeyError, TypeError, ValueError) as e:
            collection.skipped.append(Skipped(title, f"no forgetting heatmap ({e})"))
    return images


def _scores(row: Row, tasks: list[str]) -> dict[str, dict]:
    return {t: {"metric": FORGETTING_METRIC, "score": row.metrics[(t, FORGETTING_METRIC)].value,
                "stderr": row.metrics[(t, FORGETTING_METRIC)].stderr} for t in tasks}


def forgetting_heatmap(report: dict) -> bytes:
    """Relative change (%) per adapter and task; failing cells are marked with '!'."""
    import numpy as np

    plt = _pyplot()
    tasks, adapters = report["tasks"], report["adapters"]
    cells = [[report["per_task"][t]["adapters"][a] for t in tasks] for a in adapters]
    values = np.array([[c["relative_change_pct"] if c["relative_change_pct"] is not None else np.nan
                        for c in row] for row in cells], dtype=float).reshape(len(adapters), len(tasks))
    span = max(report["threshold_pct"] * 2, np.nanmax(np.abs(values)) if np.isfinite(values).any() else 0.0)

    # The rotated task names take ~2 inches; the rest keeps a one-adapter colour bar tall enough for its label.
    fig, ax = plt.subplots(figsize=(2.0 + 1.1 * len(tasks), 3.4 + 0.5 * len(adapters)), layout="constrained")
    image = ax.imshow(values, cmap="RdBu", vmin=-span, vmax=span, aspect="auto")
    ax.set_xticks(range(len(tasks)), [short_task(t) for t in tasks], rotation=45, ha="right")
    ax.set_yticks(range(len(adapters)), [adapter_label(a) for a in adapters])
    for row, adapter_cells in enumerate(cells):
        for col, cell in enumerate(adapter_cells):
            value = cell["relative_change_pct"]
            text = "n/a" if value is None else f"{value:+.1f}%" + ("" if cell["passed"] else " !")
            dark_cell = value is not None and abs(value) > 0.6 * span
            ax.text(col, row, text, ha="center", va="center", fontsize=8, color="white" if dark_cell else "black")
    fig.colorbar(image, ax=ax, label="change vs base (%)")
    ax.set_title(f"Cross-task forgetting (fail: drop > {report['threshold_pct']}%)", fontsize=10)

    return _png(fig)


def cross_task_heatmap(report: dict) -> bytes:
    """The N×N matrix in points (exact match × 100): rows baked, columns evaluated 0-shot.

    Off the diagonal: the change against the base model 0-shot; on it: the bake's gain, with the
    share of the k-shot gain kept. A cell whose CI includes zero stays grey: not painted as a
    change. Each cell carries its verdict (PASS / FAIL / ?).
    """
    import numpy as np

    plt = _pyplot()
    matrix = report["matrix"]
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
    mark = {"PASS": "PASS", "FAIL": "FAIL", "INCONCLUSIVE": "?"}
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
    ax.set_title(f"Cross-task matrix ({matrix['cell_confidence']:.1%} CIs; fail: drop > {matrix['threshold_pct']}%)",
                 fontsize=9)
    return _png(fig)


def short_fewshot_task(task: str) -> str:
    return task.removeprefix("baking_fewshot_")
