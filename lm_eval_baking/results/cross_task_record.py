"""cross_task.json, typed: the record `lm-eval-baking cross-task` writes and the report and `check-matrix` read.

Its own module, below results/cross_task.py: collect reads the record, and cross_task imports the settings,
which import the gate, which imports collect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..artifacts.records import JsonRecord
from ..constants import CROSS_TASK_FORMAT, CROSS_TASK_FORMAT_VERSION, CROSS_TASK_RECORD


@dataclass
class CrossTaskRecord(JsonRecord):
    """cross_task.json, written by `lm-eval-baking cross-task` (workflows/cross_task.py), read by the report and
    `check-matrix`: every per-doc score, the matrix with CIs and verdicts, the lm_eval commands."""

    FILE: ClassVar[str] = CROSS_TASK_RECORD
    FORMAT: ClassVar[str] = CROSS_TASK_FORMAT
    VERSION: ClassVar[int] = CROSS_TASK_FORMAT_VERSION
    KIND: ClassVar[str] = "cross-task report"
    FIX: ClassVar[str] = "rerun `lm-eval-baking cross-task`"

    tasks: list[str]
    scores: dict
    """{"base" | baked task: {task: {"0" | "k": {"metric", "score", "doc_ids", "per_doc"}}}}."""
    matrix: dict = field(default_factory=dict)
    """build_matrix's dict: cells, verdict, counts, max_forgetting_drop_pct, min_share, confidence, cell_confidence."""
    base_model: str | None = None
    form: str | None = None
    bakes: dict = field(default_factory=dict)
    """{task: its bake's folder}."""
    num_fewshot: dict = field(default_factory=dict)
    limit: int | float | None = None
    lm_eval_commands: list[str] = field(default_factory=list)
    base_reused: list[str] = field(default_factory=list)
    """Tasks whose base-model scores came from the base-model store (workflows/base_reuse.py)."""
    extra: dict = field(default_factory=dict)

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        """The matrix's `threshold_pct` (its name before issue 26) reads as max_forgetting_drop_pct."""
        matrix = data.get("matrix")
        if isinstance(matrix, dict) and "threshold_pct" in matrix and "max_forgetting_drop_pct" not in matrix:
            matrix = {("max_forgetting_drop_pct" if k == "threshold_pct" else k): v for k, v in matrix.items()}
            return {**data, "matrix": matrix}
        return data
