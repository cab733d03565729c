"""build_report: lm_eval results and bake records -> report.md + report.html + report.json (ReportRecord) + plots.

The folder is built beside `--output` and renamed into place, so readers see
the old report or the new one, never half of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..artifacts.manifest import owned_directory
from ..artifacts.outputs import check_apart, check_own_output, check_writable
from ..artifacts.records import JsonRecord
from ..constants import REPORT_FORMAT, REPORT_FORMAT_VERSION, REPORT_RECORD
from ..core.verdicts import MAX_FORGETTING_DROP_PCT, check_forgetting_drop
from ..errors import BakingError
from ..utils.atomic import make_readable, write_json
from .collect import collect, display_path
from .cross_task import matrix_table, own_task_table
from .plots import cross_task_heatmap, plot_drift, plot_forgetting, plot_kl_per_epoch, plot_pursuit
from .render import LEGEND, render_html, render_markdown
from .rows import Collection
from .tables import (
    all_metrics, bakes_table, drift_pairs_table, drift_table, forgetting_table, leaderboard, pursuit_tables,
    variants_table,
)

FORGETTING_NOTE = ("Each adapter against the base model on the same docs (lm_eval --log_samples): McNemar's exact "
                   "test and a paired bootstrap CI of the relative change, widened to the exact (Clopper-Pearson) "
                   "interval for 0/1 scores. Per-task CIs are Bonferroni-adjusted over "
                   "the tasks and p is Holm-adjusted; 'all docs pooled' is the group verdict (95%). PASS: the CI's "
                   "worst case is within the allowed drop of {threshold}%; FAIL: a larger drop is established; "
                   "INCONCLUSIVE: the docs cannot tell. 'detectable drop' is the smallest drop this many docs "
                   "detect with 80% power.")
DRIFT_NOTE = ("Adherence after each probed turn (mean over conversations, 1 greedy + sampled answers per probe), "
              "with 95% CIs that resample whole conversations; drift = early − late per conversation; trend = "
              "least-squares slope of adherence per turn.")
DRIFT_PAIRS_NOTE = ("Baked − prompted adherence on the same conversations and probes, paired doc by doc, with a 95% "
                    "CI over conversations. 'no difference' when the CI includes zero.")

KIND = "report"


@dataclass
class ReportRecord(JsonRecord):
    """report.json: everything in the report's tables, machine-readable."""

    FILE: ClassVar[str] = REPORT_RECORD
    FORMAT: ClassVar[str] = REPORT_FORMAT
    VERSION: ClassVar[int] = REPORT_FORMAT_VERSION
    KIND: ClassVar[str] = KIND
    FIX: ClassVar[str] = "rerun `lm-eval-baking report`"

    variants: list[dict] = field(default_factory=list)
    """Per row: label, kind, model, adapter, system_instruction, sources, metrics {"task:metric": {value,
    stderr, higher_is_better}}, drift_curve."""
    skipped: list[dict] = field(default_factory=list)
    """{"path", "reason"} per input not used."""
    extra: dict = field(default_factory=dict)

    def save_pretrained(self, directory: str | Path) -> None:
        """Into the report's staging folder, which `owned_directory` lists in its manifest as a whole."""
        write_json(Path(directory) / self.FILE, self.to_dict())


@dataclass
class Report:
    output: Path
    collection: Collection

    @property
    def html(self) -> Path:
        return self.output / "report.html"

    @property
    def markdown(self) -> Path:
        return self.output / "report.md"


def build_report(paths, output: str | os.PathLike, *, max_forgetting_drop_pct: float | None = None,
                 title: str = "lm-eval-baking report") -> Report:
    """Read `paths` and write report.md, report.html (self-contained), report.json and the plots to `output`.

    The folder is built beside `output` and renamed into place, so readers see
    the old report or the new one, never half of one.
    """
    output = Path(output)
    check_apart(output, paths)
    check_own_output(output, kind=KIND)
    check_writable(output)
    threshold = MAX_FORGETTING_DROP_PCT if max_forgetting_drop_pct is None else max_forgetting_drop_pct
    check_forgetting_drop(threshold, "--max-forgetting-drop-pct")
    collection = collect(paths, max_forgetting_drop_pct=threshold)
    plots = [
        ("KL per epoch", "kl_per_epoch.png", plot_kl_per_epoch(collection.bakes)),
        ("Pursuit rounds", "pursuit_rounds.png", plot_pursuit(collection.pursuits)),
        ("Drift by turn", "drift_by_turn.png", plot_drift(collection.rows)),
    ]
    plots += [(f"Forgetting: {name}", f"forgetting_{i}.png", png)
              for i, (name, png) in enumerate(plot_forgetting(collection, threshold), 1)]
    plots += [(f"Cross-task matrix: {display_path(folder)}", f"cross_task_{i}.png", cross_task_heatmap(data))
              for i, (folder, data) in enumerate(collection.cross_task_reports, 1)]
    plots = [(name, file, png) for name, file, png in plots if png]
    tables = [  # (heading, note, header, cells)
        ("Leaderboard", LEGEND, *leaderboard(collection)),
        ("Variants", "", *variants_table(collection)),
        ("Forgetting, paired per doc", FORGETTING_NOTE.format(threshold=threshold), *forgetting_table(collection)),
        ("Persona drift", DRIFT_NOTE, *drift_table(collection)),
        ("Persona drift: baked − prompted", DRIFT_PAIRS_NOTE, *drift_pairs_table(collection)),
        ("Bakes", "Held-out KL per answer token from each bake's own teacher (baking.json).",
         *bakes_table(collection)),
        *[(f"Pursuit: {name}", note, h, c) for name, note, h, c in pursuit_tables(collection)],
        *cross_task_tables(collection),
        ("All metrics", "Every metric lm_eval reported, with its stderr.", *all_metrics(collection)),
    ]
    tables = [t for t in tables if t[3]]
    try:
        with owned_directory(output, KIND) as staging:
            for _, file, png in plots:
                (staging / file).write_bytes(png)
            (staging / "report.md").write_text(render_markdown(title, tables, plots, collection), encoding="utf-8")
            (staging / "report.html").write_text(render_html(title, tables, plots, collection), encoding="utf-8")
            report_record(collection).save_pretrained(staging)
            make_readable(staging)
    except OSError as e:  # a full disk: the staging folder is gone and `output` was never touched
        raise BakingError(f"cannot write the report to {output} ({e.strerror or e}); nothing at {output} was "
                          "changed: free some disk space or choose another --output") from None
    return Report(output, collection)


def cross_task_tables(collection: Collection) -> list[tuple]:
    """Per `cross-task` run: the own-task table (base and baked, 0- and k-shot) and the N×N matrix."""
    tables = []
    for folder, data in collection.cross_task_reports:
        matrix = data.matrix
        level = (f"Scores and changes in points (exact match × 100), paired doc by doc, CIs at "
                 f"{matrix['cell_confidence']:.2%} (Bonferroni over the {len(matrix['tasks']) ** 2} cells). ")
        tables.append((f"Cross-task: own task ({display_path(folder)})", level + "Share kept = baked 0-shot gain / "
                       f"base k-shot gain; verdict against a least share of {matrix['min_share']:.0%}.",
                       *own_task_table(data)))
        tables.append((f"Cross-task matrix ({display_path(folder)})", level + "Rows: the task baked; columns: the "
                       f"task scored 0-shot. Verdicts against a relative drop of {matrix['max_forgetting_drop_pct']}%; "
                       f"overall {matrix['verdict']}.", *matrix_table(data)))
    return tables


def report_record(collection: Collection) -> ReportRecord:
    """Everything in the tables, machine-readable."""
    return ReportRecord(
        variants=[{
            "label": r.label, "kind": r.kind, "model": r.variant.model, "adapter": r.variant.adapter,
            "system_instruction": r.variant.system_instruction, "sources": r.sources,
            "metrics": {f"{task}:{metric}": {"value": m.value, "stderr": m.stderr,
                                             "higher_is_better": m.higher_is_better}
                        for (task, metric), m in sorted(r.metrics.items())},
            "drift_curve": r.drift_curve,
        } for r in collection.rows],
        skipped=[{"path": s.path, "reason": s.reason} for s in collection.skipped],
    )


