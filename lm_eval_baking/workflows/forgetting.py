"""`lm-eval-baking forgetting`: score the base model and each adapter on every task, judge, write the report.

    OUTPUT/forgetting.json   every doc's score, each adapter's paired change per task and pooled, its verdict
    OUTPUT/forgetting.png    a heatmap of the paired change, adapters x tasks (painted only where the CI excludes 0)
"""

from __future__ import annotations

import os
from dataclasses import replace

from ..artifacts.manifest import write_owned_bytes
from ..artifacts.outputs import check_apart, check_own_output, check_writable, writable_dir
from ..constants import FORGETTING_HEATMAP
from ..core import models
from ..evals.forgetting import DEFAULT_BATCH_SIZE, score_models
from ..core.verdicts import MAX_FORGETTING_DROP_PCT
from ..results.forgetting import ForgettingRecord, build_report
from ..results.plots import report_heatmap
from .base_reuse import ScoresStore

KIND = ForgettingRecord.KIND


def forgetting_matrix(base_model: str, adapters: list[str], tasks: list[str], output_dir: str | os.PathLike,
                      max_forgetting_drop_pct: float = MAX_FORGETTING_DROP_PCT, limit: int | float | None = None,
                      batch_size: int = DEFAULT_BATCH_SIZE, device: str = "cpu", apply_chat_template: bool = False,
                      progress: bool = True, reuse_base: bool = True) -> ForgettingRecord:
    """Evaluate base and adapters on every task; write and return the report.

    With `reuse_base`, the base model's scores of a task come from the base-model store when an earlier run
    stored them with the same model, task, data, settings and versions (workflows/base_reuse.py), and the
    ones measured here are stored; the report's `base_reused` lists the tasks whose scores were reused."""
    check_apart(output_dir, adapters)
    check_own_output(output_dir, kind=KIND)
    models.check_weights(base_model)  # lm_eval loads the base in its own way: a damaged file is our one line first
    check_writable(output_dir)  # fail now, not after an hour of evaluation; creates nothing, so a refusal leaves none
    store = None
    if reuse_base:
        store = ScoresStore(models.resolve_model(base_model), {
            "limit": limit, "batch_size": batch_size, "device": device, "dtype": None, "num_fewshot": None,
            "apply_chat_template": apply_chat_template, "fewshot_as_multiturn": apply_chat_template})
    run = score_models(base_model, adapters, tasks, limit=limit, batch_size=batch_size, device=device,
                       apply_chat_template=apply_chat_template, progress=progress, base_store=store)
    per_doc = {adapter: {task: s.per_doc for task, s in by_task.items()} for adapter, by_task in run.scores.items()}
    metrics = {task: s.metric for task, s in run.scores[None].items()}
    report = replace(build_report(run.base_model, run.adapters, run.tasks, per_doc, max_forgetting_drop_pct,
                                  metrics=metrics), limit=limit, device=device, apply_chat_template=apply_chat_template,
                     base_reused=store.reused if store else [])
    output_dir = writable_dir(output_dir)
    report.save_pretrained(output_dir)
    write_owned_bytes(output_dir, KIND, FORGETTING_HEATMAP, report_heatmap(report))
    return report

