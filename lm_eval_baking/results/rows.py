"""The report's data model: what was evaluated (Variant), its row of metrics, and the whole collection.

Every lm_eval run becomes part of one *variant* row, identified by what was
evaluated: the `pretrained=` model, the `peft=` adapter and the
`--system_instruction`. Runs of different tasks on the same variant merge into
one row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..constants import DRIFT_TASK, FORGETTING_GROUP, MCKL_TASK

FORGETTING_METRIC = "acc"


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
"""Derived metric: relative drop (%) of the forgetting accuracy versus the plain base model."""


@dataclass
class Measurement:
    value: float
    stderr: float | None = None
    higher_is_better: bool | None = None
    source: str = ""


@dataclass(frozen=True)
class Variant:
    """What one lm_eval run evaluated."""

    model: str
    adapter: str | None = None
    system_instruction: str | None = None

    @property
    def is_plain_base(self) -> bool:
        return self.adapter is None and not self.system_instruction


@dataclass
class Row:
    variant: Variant
    label: str = ""
    kind: str = ""
    metrics: dict[tuple[str, str], Measurement] = field(default_factory=dict)
    """(task, metric) -> measurement; derived metrics use the task name FORGETTING."""
    drift_curve: dict[int, float] | None = None
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
    bakes: list[tuple[str, dict]]
    pursuits: list[tuple[str, dict]]
    forgetting_reports: list[tuple[str, dict]]
    skipped: list[Skipped]
    subtasks: dict[str, list[str]]
    """group -> member tasks, as lm_eval reported them."""
    cross_task_reports: list[tuple[str, dict]] = field(default_factory=list)
    """(folder, cross_task.json) of `lm-eval-baking cross-task` runs."""

    def row(self, label: str) -> Row | None:
        return next((r for r in self.rows if r.label == label), None)


