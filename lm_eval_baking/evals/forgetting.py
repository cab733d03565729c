"""Cross-task forgetting, the measuring half: the base model and each adapter answer the same docs.

`score_models` runs lm_eval in-process on the base model and on the base +
each adapter, task by task, and keeps every doc's score (lm_eval's per-sample
output), so the comparison can be paired doc by doc (`results.forgetting`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..artifacts.safety import check_adapter
from ..core import models
from ..core.harness import headline_metric
from ..errors import BakingError
from ..utils.text import first_line, model_label, quoted
from .config import ForgettingSettings
from .lm_eval_glue import expand_tasks, task_manager_for

DEFAULT_TASKS = ["baking_forgetting"]
DEFAULT_BATCH_SIZE = ForgettingSettings.batch_size


@dataclass
class TaskScores:
    """One model's scores on one task: the headline metric per doc, in doc order."""

    task: str
    metric: str
    per_doc: dict[int, float]
    """doc_id -> the doc's metric value (0/1 for accuracy)."""
    score: float
    stderr: float | None = None

    def to_dict(self) -> dict:
        return {"task": self.task, "metric": self.metric, "score": self.score, "stderr": self.stderr,
                "per_doc": {str(k): v for k, v in sorted(self.per_doc.items())}}

    @classmethod
    def from_dict(cls, data: dict) -> "TaskScores":
        return cls(data["task"], data["metric"], {int(k): float(v) for k, v in data["per_doc"].items()},
                   float(data["score"]), data.get("stderr"))


@dataclass
class ForgettingRun:
    """What `score_models` measured: scores[None] is the base model, scores[adapter] each adapter."""

    base_model: str
    adapters: list[str]
    tasks: list[str]
    scores: dict[str | None, dict[str, TaskScores]] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


def score_models(base_model: str, adapters: list[str], tasks: list[str], *, limit: int | float | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, device: str = "cpu", dtype: str | None = None,
                 apply_chat_template: bool = False, include_base: bool = True, progress: bool = True,
                 base_store=None) -> ForgettingRun:
    """Evaluate the base model and every adapter on every leaf task of `tasks`, keeping per-doc scores.

    `tasks` may name our tasks/groups (e.g. `baking_forgetting`) or any lm_eval
    task; groups are expanded so every leaf task gets its own column (each leaf
    runs with its own config). Adapters are checked before any model loads.
    `base_store` (workflows.base_reuse.ScoresStore) gives the base model's stored scores of a task
    (`get(task)`), which are then not measured again, and keeps those measured here (`put(task, scores)`).
    """
    from tqdm.auto import tqdm

    base_model = models.resolve_model(base_model)
    adapters = [str(adapter) for adapter in adapters]
    for adapter in adapters:
        check_adapter(adapter, base_model=base_model)
    task_manager = task_manager_for(tasks)
    leaf_tasks = expand_tasks(task_manager, tasks)
    run = ForgettingRun(base_model, adapters, leaf_tasks, settings={
        "limit": limit, "device": device, "dtype": dtype, "apply_chat_template": apply_chat_template})
    stored = {task: base_store.get(task) for task in leaf_tasks} if include_base and base_store is not None else {}
    stored = {task: scores for task, scores in stored.items() if scores is not None}
    if include_base:
        run.scores[None] = dict(stored)
    runs = ([None] if include_base and len(stored) < len(leaf_tasks) else []) + adapters  # None: the base model
    total = len(runs) * len(leaf_tasks) - (len(stored) if None in runs else 0)
    with tqdm(total=total, desc="forgetting (model x task)", disable=not progress) as bar:
        for adapter in runs:
            lm = load_lm(base_model, adapter, batch_size, device, dtype)
            run.scores.setdefault(adapter, {})
            for task in (t for t in leaf_tasks if adapter is not None or t not in stored):
                bar.set_postfix_str(f"{model_label(adapter)} / {task}")
                run.scores[adapter][task] = evaluate_task(lm, task, task_manager, limit, apply_chat_template)
                if adapter is None and base_store is not None:
                    base_store.put(task, run.scores[adapter][task])
                bar.update()
            del lm  # free this model before the next one loads
    run.scores = {key: {task: run.scores[key][task] for task in leaf_tasks} for key in run.scores}  # task order
    return run


def load_lm(base_model: str, adapter: str | None, batch_size: int, device: str, dtype: str | None):
    """lm_eval's HFLM of the base model, with `adapter` (a PEFT folder) on it when given."""
    from lm_eval.models.huggingface import HFLM

    try:
        return HFLM(pretrained=base_model, peft=adapter, batch_size=batch_size, device=device,
                    **({"dtype": dtype} if dtype else {}))
    except (OSError, ValueError) as e:
        what = f"adapter {adapter} on {base_model}" if adapter else f"model {base_model}"
        raise BakingError(f"cannot load {what} ({first_line(e)}); check that the adapter was baked on this "
                          "base model") from None


def evaluate_task(lm, task: str, task_manager, limit, apply_chat_template: bool, *,
                  num_fewshot: int | None = None) -> TaskScores:
    """One task through lm_eval (`simple_evaluate`, per-sample output kept): its headline metric per doc.

    With a chat template, few-shot examples are chat turns (lm_eval's fewshot_as_multiturn).
    """
    import lm_eval

    output = lm_eval.simple_evaluate(
        model=lm, tasks=[task], task_manager=task_manager, limit=limit, num_fewshot=num_fewshot,
        apply_chat_template=apply_chat_template, fewshot_as_multiturn=apply_chat_template, log_samples=True,
    )
    results = output["results"][task]
    reported = [key.partition(",")[0] for key, value in results.items()
                if "," in key and "_stderr" not in key and isinstance(value, (int, float))]
    metric = headline_metric(reported, output["higher_is_better"].get(task, {}))
    if metric is None:
        raise BakingError(f"task {quoted(task)} reports no higher-is-better metric to compare; pick another task")
    key = next(k for k in results if k.partition(",")[0] == metric)
    per_doc = {int(sample["doc_id"]): float(sample[metric]) for sample in output["samples"][task]}
    stderr = results.get(key.replace(",", "_stderr,", 1))
    return TaskScores(task, metric, per_doc, float(results[key]),
                      stderr if isinstance(stderr, (int, float)) else None)
