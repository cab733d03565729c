"""Running lm_eval from Python: finding tasks, checking task and metric names, evaluating a model in memory.

Also `install_one_line_errors`, how our tasks' BakingErrors end the `lm_eval` command: one line,
status 2; and `check_peft`, the adapter check every one of our task datasets runs first.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
from pathlib import Path

from ..artifacts.safety import check_adapter
from ..constants import ADAPTER_CONFIG
from ..core.harness import tasks_path
from ..errors import BakingError
from ..utils.text import quoted

# What lm_eval reports for a task that names no metric_list (lm_eval.api.registry's defaults).
_DEFAULT_METRICS = {
    "loglikelihood": ("perplexity", "acc"),
    "loglikelihood_rolling": ("word_perplexity", "byte_perplexity", "bits_per_byte"),
    "multiple_choice": ("acc", "acc_norm"),
    "generate_until": ("exact_match",),
}


def end_in_one_line(kind, error, traceback) -> None:
    """sys.excepthook: a BakingError that nothing caught ends the process with its one line and status 2.

    Our tasks raise BakingError like the rest of the package, so an in-process caller (our own
    code, a test, a script calling lm_eval.simple_evaluate) catches it as usual. Inside the `lm_eval`
    command nothing catches it, and Python would print a long traceback with our message on its last
    line; this prints only the line. Anything else keeps its traceback.
    """
    if not isinstance(error, BakingError):
        _previous_hook(kind, error, traceback)
        return
    # A newline first: lm_eval's progress bar may have left the cursor mid-line.
    print(f"\nlm-eval-baking: error: {error}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    logging.shutdown()
    # The interpreter would exit with status 1 after any excepthook; 2 is what our CLI gives a user error.
    os._exit(2)


_previous_hook = sys.excepthook


def install_one_line_errors() -> None:
    """Run when this module is imported: every module our task YAMLs name with `!function` imports it
    (for `check_peft`), so the hook is on inside `lm_eval` before any of our task code runs."""
    global _previous_hook
    if sys.excepthook is not end_in_one_line:
        _previous_hook = sys.excepthook
        sys.excepthook = end_in_one_line


install_one_line_errors()


def check_peft(metadata: dict) -> None:
    """The one adapter check (safetensors only, baked on `pretrained=`) for a `peft=` lm_eval loaded.

    Every dataset of our tasks (baking_mckl, baking_persona_drift, baking_forgetting_*, baking_fewshot_*)
    calls it first: lm_eval puts --model_args into the task metadata. lm_eval has loaded the adapter by
    then (simple_evaluate builds the model before the tasks), so only what PEFT accepts gets here: an
    adapter of the right shapes baked on other weights, or a pickle. A `peft=` that is no adapter folder
    at all is left alone: lm_eval failed to load it long before.
    """
    adapter = metadata.get("peft")
    if not isinstance(adapter, str) or not (Path(adapter) / ADAPTER_CONFIG).is_file():
        return
    base = metadata.get("pretrained")
    check_adapter(adapter, base_model=base if isinstance(base, str) else None,
                  allow_pickle=str(metadata.get("allow_pickle", "")).lower() in ("1", "true", "yes"))


def task_manager_for(names: list[str], metadata: dict | None = None):
    """A TaskManager that knows `names`: ours alone when that suffices.

    Indexing lm_eval's own ~15k task configs takes tens of seconds, so it is
    only done when a requested name is not one of ours.
    """
    from lm_eval.tasks import TaskManager

    ours = TaskManager(include_path=str(tasks_path()), include_defaults=False, metadata=metadata)
    if set(names) <= set(ours.all_tasks):
        return ours
    return TaskManager(include_path=str(tasks_path()), metadata=metadata)


def check_tasks(task_manager, names: list[str]) -> None:
    """An unknown task name is one BakingError with the closest known names."""
    known = set(task_manager.all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "see `lm_eval ls tasks`"
            raise BakingError(f"unknown lm_eval task '{quoted(name)}'; {hint}")


def expand_tasks(task_manager, names: list[str]) -> list[str]:
    """Leaf task names for the requested tasks/groups; unknown names are a BakingError.

    Loading also builds every dataset, so broken data fails here, before any
    model time is spent.
    """
    check_tasks(task_manager, names)
    return list(task_manager.load(list(names))["tasks"])


def task_metrics(task_manager, task: str) -> list[str]:
    """The metric names a task (or group) reports, read from its YAML without loading its data."""
    entry = task_manager.task_index.get(task)
    config = (entry.cfg if entry is not None else None) or {}
    listed = config.get("metric_list") or config.get("aggregate_metric_list") or []
    names = [m.get("metric") for m in listed if isinstance(m, dict) and isinstance(m.get("metric"), str)]
    return names or list(_DEFAULT_METRICS.get(config.get("output_type"), ()))


def check_task_metric(task: str, metric: str) -> None:
    """Refuse an unknown task, or a metric the task does not report, before any model work."""
    manager = task_manager_for([task])
    check_tasks(manager, [task])
    metrics = task_metrics(manager, task)
    if metrics and metric not in metrics:
        raise BakingError(f"task '{quoted(task)}' reports no metric '{quoted(metric)}'; "
                          f"pick one of {', '.join(metrics)}")


def evaluate_in_memory(model, tokenizer, task: str, metric: str, *, metadata: dict | None = None,
                       system_instruction: str | None = None, batch_size: int = 8,
                       limit: int | float | None = None) -> tuple[float, bool]:
    """(value, higher_is_better) of one lm_eval task metric for a model already in memory (HFLM wraps it)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    manager = task_manager_for([task], metadata)
    check_tasks(manager, [task])
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    output = lm_eval.simple_evaluate(
        model=lm, tasks=[task], task_manager=manager, apply_chat_template=True,
        system_instruction=system_instruction, limit=limit, log_samples=False, bootstrap_iters=0,
    )
    results = output["results"].get(task, {})
    values = {key.partition(",")[0]: value for key, value in results.items() if "," in key}
    if metric not in values:
        reported = sorted(m for m in values if not m.endswith("_stderr"))
        raise BakingError(f"task '{quoted(task)}' reports no metric '{quoted(metric)}'; pick one of {reported}")
    higher_is_better = output.get("higher_is_better", {}).get(task, {}).get(metric, True)
    return float(values[metric]), higher_is_better is not False
