"""The report's tables: the leaderboard (one row per variant) and the detail tables, as header + cells."""

from __future__ import annotations

import math
from pathlib import Path

from ..core.harness import headline_metric
from .collect import display_path
from .drift import interval_text
from .forgetting import change_text
from .results_files import is_number
from .rows import FORGETTING, HEADLINE_COLUMNS, Collection, Measurement, Skipped


def other_columns(collection: Collection) -> list[tuple[str, str]]:
    """(task, metric) headline cells for every task that is neither ours nor a member of a shown group."""
    ours = {c.task for c in HEADLINE_COLUMNS} | {FORGETTING}
    members = {t for group, tasks in collection.subtasks.items() for t in tasks}
    by_task: dict[str, dict[str, Measurement]] = {}
    for row in collection.rows:
        for (task, metric), m in row.metrics.items():
            if task not in ours and task not in members:
                by_task.setdefault(task, {}).setdefault(metric, m)
    columns = []
    for task, metrics in sorted(by_task.items()):
        chosen = headline_metric(list(metrics), {m: measure.higher_is_better for m, measure in metrics.items()})
        columns.append((task, chosen or next(iter(metrics))))
    return columns


def format_value(m: Measurement | None, spec: str = ".4f", suffix: str = "") -> str:
    """'0.867 [0.801, 0.921]' with a computed CI, '0.051 ± 0.009' with lm_eval's stderr, else the value alone."""
    if m is None or not math.isfinite(m.value):
        return "–"
    text = format(m.value, spec) + suffix
    if m.ci is not None and all(math.isfinite(b) for b in m.ci):
        return f"{text} [{format(m.ci[0], spec)}, {format(m.ci[1], spec)}]"
    return text + (f" ± {format(m.stderr, spec)}" if m.stderr is not None else "")


def forgetting_cell(m: Measurement | None) -> str:
    """A drop is shown only when its CI excludes zero; otherwise 'no change' with the CI that says how much
    could hide in the noise. The verdict is against the report's allowed drop."""
    if m is None or m.ci is None or not math.isfinite(m.value):
        return "–"
    low, high = m.ci
    bounds = f"[{low:+.1f}, {high:+.1f}]" if math.isfinite(low) and math.isfinite(high) else "[no CI]"
    if low <= 0 <= high:
        return f"no change, drop CI {bounds}% {m.verdict}"
    return f"{'drop' if m.value > 0 else 'gain'} {abs(m.value):.1f}% {bounds} {m.verdict}"


def leaderboard(collection: Collection) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the leaderboard: one row per variant."""
    extra = other_columns(collection)
    header = ["variant", "kind"] + [c.title for c in HEADLINE_COLUMNS] + ["forgetting vs base (paired)"]
    header += [f"{task} {metric}" for task, metric in extra]
    cells = []
    for row in collection.rows:
        line = [row.label, row.kind]
        line += [format_value(row.metrics.get((c.task, c.metric)), ".3f" if c.name != "kl" else ".4f")
                 for c in HEADLINE_COLUMNS]
        line.append(forgetting_cell(row.get(FORGETTING)))
        line += [format_value(row.metrics.get(key)) for key in extra]
        cells.append(line)
    return header, cells


def all_metrics(collection: Collection) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "task", "metric", "value", "stderr", "better"]
    cells = []
    for row in collection.rows:
        for (task, metric), m in sorted(row.metrics.items()):
            better = {True: "higher", False: "lower", None: ""}[m.higher_is_better]
            cells.append([row.label, task, metric, f"{m.value:.4f}", "" if m.stderr is None else f"{m.stderr:.4f}",
                          better])
    return header, cells


def variants_table(collection: Collection) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "model", "adapter (peft=)", "system instruction", "results files"]
    cells = [[r.label, r.variant.model, r.variant.adapter or "", r.variant.system_instruction or "",
              str(len([s for s in r.sources if Path(s).name.startswith("results_")]))] for r in collection.rows]
    return header, cells


def bakes_table(collection: Collection) -> tuple[list[str], list[list[str]]]:
    header = ["bake", "prompt", "unprompted KL", "final KL", "ratio", "epochs", "wall time"]
    cells = []
    for directory, record in collection.bakes:
        kl = record.kl
        if not isinstance(kl, dict):
            continue  # pursuit/strength exports carry no KL of their own
        try:
            # The written adapter's KL: the best measured one (kl.kept) where recorded, else the last epoch's.
            base, final = kl["unprompted_base"], (kl.get("kept") or kl["per_epoch"][-1])["heldout_kl"]
            seconds = sum((record.performance or {}).get("seconds", {}).values())
            cells.append([display_path(directory), _short(record.config["prompt"]),
                          f"{base['per_token']:.4f} ± {base['per_token_stderr']:.4f}",
                          f"{final['per_token']:.4f} ± {final['per_token_stderr']:.4f}",
                          f"{kl['ratio_to_unprompted']:.1%}", str(len(kl["per_epoch"])), f"{seconds:.0f} s"])
        except (KeyError, TypeError, IndexError):
            collection.skipped.append(Skipped(directory + "/baking.json", "bake record without KL per epoch"))
    return header, cells


def pursuit_tables(collection: Collection) -> list[tuple[str, str, list[str], list[list[str]]]]:
    tables = []
    for directory, record in collection.pursuits:
        header = ["round", "score", "improvement", "with prompt again", "held-out KL to teacher", "KL ratio"]
        cells = []
        for r in record.rounds or []:
            label = "base" if r.get("round") == 0 else str(r.get("round"))
            if r.get("round") == record.best_round:
                label += " (best)"
            cells.append([label, _fmt(r.get("score"), ".4f"), _fmt(r.get("improvement"), "+.1%"),
                          _fmt(r.get("reprompted_score"), ".4f"), _fmt(r.get("heldout_kl"), ".4f"),
                          _fmt(r.get("kl_ratio"), ".1%")])
        note = (f"score: {(record.settings or {}).get('evaluator', '?')} (higher is better); "
                f"stopped: {record.stop_reason_text or record.status or '?'}")
        tables.append((display_path(directory), note, header, cells))
    return tables


def _fmt(value, spec: str) -> str:
    return "–" if not is_number(value) else format(value, spec)


def _short(text: str, width: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 1] + "…"




def forgetting_table(collection: Collection) -> tuple[list[str], list[list[str]]]:
    """Per adapter and task: the paired change, its CI, Holm-adjusted p, the smallest detectable drop, verdict."""
    header = ["variant", "task", "docs", "base", "change (paired) [CI]", "p (Holm)", "detectable drop", "verdict"]
    cells = []
    for row in collection.rows:
        if not row.forgetting:
            continue
        for task, cell in [*row.forgetting["per_task"].items(), ("all docs pooled", row.forgetting["group"])]:
            if cell is None:
                continue
            c = cell["comparison"]
            mdd = cell.get("minimum_detectable_drop_pct")
            cells.append([row.label, task.removeprefix("baking_forgetting_"), str(c["n"]), f"{c['base_mean']:.3f}",
                          change_text(cell), _p(cell.get("p_holm", c["p_value"])),
                          "–" if mdd is None or not math.isfinite(mdd) else f"{mdd:.1f}%", cell["verdict"]])
    return header, cells


def drift_table(collection: Collection) -> tuple[list[str], list[list[str]]]:
    """Per variant and persona: adherence after each probed turn, early, late, drift and trend, each with a CI."""
    turns = sorted({t for r in collection.rows for s in (r.drift or {}).values() for t in s["turns"]})
    header = ["variant", "persona", "conversations"] + [f"turn {t}" for t in turns] + \
        ["early (≤ 5)", "late (≥ 25)", "drift = early − late", "trend / turn"]
    cells = []
    for row in collection.rows:
        for persona, s in (row.drift or {}).items():
            cells.append([row.label, persona, str(s["conversations"])]
                         + [interval_text(s["turns"].get(t)) for t in turns]
                         + [interval_text(s["early"]), interval_text(s["late"]), interval_text(s["drift"]),
                            interval_text(s.get("trend_per_turn"), "+.4f")])
    return header, cells


def drift_pairs_table(collection: Collection) -> tuple[list[str], list[list[str]]]:
    """Baked − prompted adherence per turn, paired doc by doc, with a CI over conversations."""
    turns = sorted({t for pair in collection.drift_pairs for t in pair["by_turn"]})
    header = ["baked", "prompted"] + [f"turn {t}" for t in turns]
    cells = [[pair["baked"].label, pair["prompted"].label]
             + [_paired(pair["by_turn"].get(t)) for t in turns] for pair in collection.drift_pairs]
    return header, cells


def _paired(entry: dict | None) -> str:
    if not entry:
        return "–"
    low, high = entry["ci"]
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{entry['value']:+.2f} (no CI)"
    if not entry["changed"]:
        return f"no difference [{low:+.2f}, {high:+.2f}]"
    return f"{entry['value']:+.2f} [{low:+.2f}, {high:+.2f}]"


def _p(value) -> str:
    return "–" if value is None else (f"{value:.3f}" if value >= 0.001 else "<0.001")
