"""The report's data model: what was evaluated (Variant), its row of metrics, and the whole collection.

Every lm_eval run becomes part of one *variant* row, identified by what was
evaluated: the `pretrained=` model, the `peft=` adapter and the
`--system_instruction`. Runs of different tasks on the same variant merge into
one row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..artifacts.bake_dir import BakeRecord
from ..artifacts.records import PursuitRecord
from ..constants import DRIFT_TASK, FORGETTING_GROUP, MCKL_TASK
from .cross_task_record import CrossTaskRecord
from .forgetting import ForgettingRecord

FORGETTING_METRIC = "acc"
Z95 = 1.959964  # the normal quantile of a two-sided 95% interval


@dataclass(frozen=True)
class Column:
    """A headline leaderboard column and the name thresholds use for it (`check --min NAME=...`)."""

    name: str
    title: str
    task: str
    metric: str
    higher_is_better: bool


HEADLINE_COLUMNS = (
    Column("kl", "MC-KL / token", MCKL_TASK, "kl_per_token", False),
    Column("quality", "quality", MCKL_TASK, "quality", True),
    Column("adherence", "persona adherence", DRIFT_TASK, "adherence", True),
    Column("drift", "drift (early − late)", DRIFT_TASK, "drift", False),
    Column("forgetting_acc", "forgetting acc", FORGETTING_GROUP, FORGETTING_METRIC, True),
)
FORGETTING = "forgetting"
"""Derived metric: the paired relative change (%) of the forgetting group's accuracy versus the plain base
model, pooled over all its docs, with its CI and verdict (negative = a drop)."""


@dataclass
class Measurement:
    value: float
    stderr: float | None = None
    higher_is_better: bool | None = None
    source: str = ""
    ci: tuple[float, float] | None = None
    """The 95% CI when one was computed (a bootstrap); else `interval()` uses lm_eval's stderr."""
    verdict: str | None = None
    """For a comparison against a threshold (forgetting): PASS, FAIL or INCONCLUSIVE."""

    def interval(self) -> tuple[float, float] | None:
        """The 95% CI: the computed one, else value ± 1.96 stderr, else None (lm_eval gave no stderr)."""
        if self.ci is not None:
            return self.ci
        if self.stderr is not None:
            return (self.value - Z95 * self.stderr, self.value + Z95 * self.stderr)
        return None


@dataclass(frozen=True)
class Variant:
    """What one lm_eval run evaluated."""

    model: str
    adapter: str | None = None
    system_instruction: str | None = None
    reference: str | None = None
    """The bake our tasks scored against (`--metadata bake=`), when it is not the adapter itself: MC-KL
    against two prompts' references are two evaluations of one adapter, so two rows."""

    @property
    def is_plain_base(self) -> bool:
        return self.adapter is None and not self.system_instruction and self.reference is None


@dataclass
class Row:
    variant: Variant
    label: str = ""
    kind: str = ""
    metrics: dict[tuple[str, str], Measurement] = field(default_factory=dict)
    """(task, metric) -> measurement; derived metrics use the task name FORGETTING."""
    drift_curve: dict[int, float] | None = None
    samples: dict[str, dict[int, dict]] = field(default_factory=dict)
    """task -> doc_id -> that doc's lm_eval sample (`--log_samples`): what paired comparisons pair."""
    forgetting: dict | None = None
    """The paired forgetting judgement against the plain base model (results.forgetting.judge_adapter)."""
    drift: dict | None = None
    """Adherence by turn and drift with CIs over conversations (results.drift.drift_summary)."""
    sources: list[str] = field(default_factory=list)
    dates: dict[str, float] = field(default_factory=dict)
    """task -> date of the run it came from (the newest run of a task wins)."""

    def get(self, name: str) -> Measurement | None:
        """A metric by column name (`kl`, `quality`, ..., `forgetting`) or as `TASK:METRIC`."""
        if name == FORGETTING:
            return self.metrics.get((FORGETTING, "drop_pct"))
        for column in HEADLINE_COLUMNS:
            if column.name == name:
                return self.metrics.get((column.task, column.metric))
        task, _, metric = name.partition(":")
        return self.metrics.get((task, metric))


@dataclass
class Skipped:
    path: str
    reason: str
    whole_file: bool = True
    """False when the file was used but something in it was not (a missing metric)."""


@dataclass
class Collection:
    rows: list[Row]
    bakes: list[tuple[str, BakeRecord]]
    pursuits: list[tuple[str, PursuitRecord]]
    forgetting_reports: list[tuple[str, ForgettingRecord]]
    skipped: list[Skipped]
    subtasks: dict[str, list[str]]
    """group -> member tasks, as lm_eval reported them."""
    drift_pairs: list[dict] = field(default_factory=list)
    """Baked − prompted adherence per turn, paired (results.derived)."""
    cross_task_reports: list[tuple[str, CrossTaskRecord]] = field(default_factory=list)
    """(folder, cross_task.json) of `lm-eval-baking cross-task` runs."""

    def row(self, label: str) -> Row | None:
        return next((r for r in self.rows if r.label == label), None)


