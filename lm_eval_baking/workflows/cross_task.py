"""`lm-eval-baking cross-task`: bake each task's few-shot prompt, score every bake on every task, judge the matrix.

    OUTPUT/bakes/TASK/        each task's bake (`bake --task TASK`), unless --bake TASK=DIR names one
    OUTPUT/cross_task.json    every per-doc score, the matrix with CIs and verdicts, the lm_eval commands
    OUTPUT/cross_task.png     the heatmap

Evaluations run through lm_eval in-process (`evals.forgetting.evaluate_task`) on the first
`limit` test docs of each task: the base model 0-shot and k-shot on every task, each bake
0-shot on every task, and each bake k-shot on its own task (re-prompting). In the chat form
few-shot examples are chat turns (`--apply_chat_template --fewshot_as_multiturn`); in the
text form there is no chat template.
"""

from __future__ import annotations

import os
import re

from ..artifacts.bake_dir import BakeDir
from ..artifacts.manifest import write_owned_bytes
from ..artifacts.outputs import check_apart, check_own_output, writable_dir
from ..artifacts.safety import check_adapter
from ..constants import CROSS_TASK_BAKES, CROSS_TASK_HEATMAP
from ..core import models
from ..core.harness import LmEvalRun
from ..core.prompts import resolve_form
from ..errors import BakingError
from ..evals.config import TaskPromptSettings
from ..evals.forgetting import evaluate_task, load_lm
from ..evals.task_prompts import load_task, task_manager
from ..results.cross_task import build_matrix
from ..results.cross_task_record import CrossTaskRecord
from ..results.plots import cross_task_heatmap
from ..training.config import BakeConfig
from ..utils.text import quoted
from .base_reuse import ScoresStore
from .settings import CrossTaskSettings
from .task_bake import bake_task

KIND = CrossTaskRecord.KIND


def cross_task(tasks: list[str], output_dir: str | os.PathLike, config: BakeConfig, *,
               settings: CrossTaskSettings | None = None, task_settings: TaskPromptSettings | None = None,
               bakes: dict[str, str] | None = None, progress: bool = True,
               trust_remote_code: bool = False) -> CrossTaskRecord:
    """Bake (or take) each task's prompt, evaluate base and bakes through lm_eval, write and return the report."""
    settings = settings or CrossTaskSettings()
    task_settings = task_settings or TaskPromptSettings()
    bakes = dict(bakes or {})
    if len(set(tasks)) != len(tasks) or len(tasks) < 2:
        raise BakingError(f"--tasks needs at least two different tasks (got {', '.join(tasks) or 'none'})")
    unknown = sorted(set(bakes) - set(tasks))
    if unknown:
        raise BakingError(f"--bake names task {quoted(unknown[0])}, which is not in --tasks; add it or drop the bake")
    check_apart(output_dir, list(bakes.values()), option="--output")
    check_own_output(output_dir, kind=KIND)
    output_dir = writable_dir(output_dir)  # fail now, not after an hour of baking
    base = models.resolve_model(config.model)
    form = resolve_form(config.prompt_format, models.load_tokenizer(base, trust_remote_code=trust_remote_code))
    shots = {task: _shots(task, bakes.get(task), task_settings, base, form) for task in tasks}
    for task in tasks:
        if task not in bakes:
            folder = output_dir / CROSS_TASK_BAKES / re.sub(r"[^A-Za-z0-9_.-]+", "_", task)
            bake_task(task, config, folder, task_settings, progress=progress, trust_remote_code=trust_remote_code)
            bakes[task] = str(folder)

    chat = form == "chat"
    manager = task_manager(tasks, task_settings.include_path)
    device = models.pick_device(config.device)
    scores: dict = {"base": {}}
    commands = []

    def run(adapter: str | None, task: str, k: int, store: ScoresStore | None = None) -> dict:
        lm_scores = evaluate_task(lm, task, manager, settings.limit, chat, num_fewshot=k)
        if store:
            store.put(task, lm_scores, num_fewshot=k)
        return noted(adapter, task, k, lm_scores)

    def noted(adapter: str | None, task: str, k: int, lm_scores) -> dict:
        commands.append(LmEvalRun(base=base, adapter=adapter, tasks=[task], num_fewshot=k, apply_chat_template=chat,
                                  include_path=task_settings.include_path, log_samples=True,
                                  batch_size=settings.eval_batch_size, device=device).shell()
                        + (f" --limit {settings.limit}" if settings.limit else ""))
        return as_entry(lm_scores)

    store = ScoresStore(base, {"limit": settings.limit, "batch_size": settings.eval_batch_size, "device": device,
                               "dtype": None, "apply_chat_template": chat, "fewshot_as_multiturn": chat},
                        task_settings.include_path) if settings.reuse_base else None
    lm = None
    for task in tasks:
        scores["base"][task] = {}
        for shot, k in (("0", 0), ("k", shots[task])):
            stored = store.get(task, num_fewshot=k) if store else None
            if stored is None and lm is None:
                lm = load_lm(base, None, settings.eval_batch_size, device, None)
            scores["base"][task][shot] = noted(None, task, k, stored) if stored else run(None, task, k, store)
    for baked in tasks:
        lm = None  # free the previous model before the next loads
        lm = load_lm(base, bakes[baked], settings.eval_batch_size, device, None)
        scores[baked] = {task: {"0": run(bakes[baked], task, 0)} for task in tasks}
        scores[baked][baked]["k"] = run(bakes[baked], baked, shots[baked])
    _check_same_docs(scores, tasks)

    matrix = build_matrix(tasks, scores, max_forgetting_drop_pct=settings.max_forgetting_drop_pct,
                          min_share=settings.min_share)
    report = CrossTaskRecord(tasks=tasks, scores=scores, matrix=matrix, base_model=base, form=form, bakes=bakes,
                             num_fewshot=shots, limit=settings.limit, lm_eval_commands=commands,
                             base_reused=store.reused if store else [])
    report.save_pretrained(output_dir)
    write_owned_bytes(output_dir, KIND, CROSS_TASK_HEATMAP, cross_task_heatmap(report))
    return report


def as_entry(lm_scores) -> dict:
    """One model's scores of one task in cross_task.json: the metric, the score, every doc's value."""
    return {"metric": lm_scores.metric, "score": lm_scores.score,
            "doc_ids": sorted(lm_scores.per_doc), "per_doc": [lm_scores.per_doc[i] for i in sorted(lm_scores.per_doc)]}


def parse_bakes(pairs: list[str]) -> dict[str, str]:
    """`TASK=DIR` pairs from --bake into {task: folder}."""
    bakes = {}
    for pair in pairs:
        task, equals, folder = pair.partition("=")
        if not equals or not task.strip() or not folder.strip():
            raise BakingError(f"--bake {quoted(pair)} is not TASK=DIR; e.g. --bake baking_fewshot_plural=adapters/plural")
        if task.strip() in bakes:
            raise BakingError(f"--bake names task {quoted(task.strip())} twice; keep one")
        bakes[task.strip()] = folder.strip()
    return bakes


def _shots(task: str, bake: str | None, task_settings: TaskPromptSettings, base: str, form: str) -> int:
    """K of a task: what its named bake baked (checked against the task and base), else --num-fewshot or the task's."""
    if bake is None:
        k = task_settings.num_fewshot or load_task(task, task_settings.include_path).get_config("num_fewshot")
        if not k:
            raise BakingError(f"task {quoted(task)} sets no few-shot count; pass --num-fewshot K")
        return int(k)
    check_adapter(bake, base_model=base)
    record = BakeDir(bake).record()
    baked = record.task or {}
    if baked.get("name") != task:
        raise BakingError(f"--bake {task}={bake} is not a bake of task {quoted(task)} (its baking.json names "
                          f"{quoted(baked.get('name'))}); make one with `lm-eval-baking bake --task {task}`")
    if (record.prompt_form or "chat") != form:
        raise BakingError(f"--bake {task}={bake} was baked in the {record.prompt_form} form, the others in the {form} "
                          "form; pass --prompt-format to match it")
    return int(baked["num_fewshot"])


def _check_same_docs(scores: dict, tasks: list[str]) -> None:
    for task in tasks:
        reference = scores["base"][task]["0"]["doc_ids"]
        for model, by_task in scores.items():
            for shots, entry in by_task.get(task, {}).items():
                if entry["doc_ids"] != reference:
                    raise BakingError(f"lm_eval scored different docs of {quoted(task)} for {quoted(model)} at "
                                      f"{shots} shots; the comparison must be paired doc by doc")

