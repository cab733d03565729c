"""The parts of lm_eval's API this package uses are still there, with the parameters we pass.

setup.cfg allows lm-eval>=0.4.13,<0.5; the suite runs on one version of that range. When a new lm_eval
moves something, this test names it (and the module of ours that uses it) instead of a task failing
deep inside an evaluation. A new use of lm_eval in the package must be added to API below: the scan of
the package's imports fails until it is.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lm_eval_baking"

# (module, attribute path, the parameters or fields we rely on, where we use it)
API = [
    ("lm_eval", "simple_evaluate", ["model", "tasks", "task_manager", "limit", "num_fewshot", "apply_chat_template",
                                    "fewshot_as_multiturn", "log_samples", "system_instruction", "bootstrap_iters"],
     "evals/forgetting.py, evals/lm_eval_glue.py"),
    ("lm_eval.models.huggingface", "HFLM", ["pretrained", "peft", "tokenizer", "batch_size", "device", "dtype"],
     "evals/forgetting.py, evals/lm_eval_glue.py"),
    ("lm_eval.models.huggingface", "HFLM.tok_encode", ["string", "add_special_tokens"],
     "core/chat.py (encode_like_lm_eval copies it)"),
    ("lm_eval.models.huggingface", "HFLM._encode_pair", ["context", "continuation"],
     "core/chat.py (lm_eval_encode_pair copies it)"),
    ("lm_eval.tasks", "TaskManager", ["include_path", "include_defaults", "metadata"],
     "evals/lm_eval_glue.py, evals/task_prompts.py"),
    ("lm_eval.tasks", "TaskManager.load", [], "evals/lm_eval_glue.py, evals/task_prompts.py"),
    ("lm_eval.tasks", "TaskManager.all_tasks", [], "evals/lm_eval_glue.py, evals/task_prompts.py"),
    ("lm_eval.tasks", "TaskManager.all_groups", [], "tests"),
    ("lm_eval.tasks", "TaskManager.task_index", [], "evals/lm_eval_glue.py (task_metrics)"),
    ("lm_eval.tasks._index", "Entry", ["cfg"], "evals/lm_eval_glue.py (task_metrics reads task_index[name].cfg)"),
    ("lm_eval.api.instance", "Instance", ["request_type", "doc", "arguments", "idx"], "evals/lm_tasks.py"),
    ("lm_eval.api.task", "ConfigurableTask", ["config"], "evals/lm_tasks.py"),
    ("lm_eval.api.task", "ConfigurableTask.construct_requests", ["doc", "ctx"], "evals/lm_tasks.py"),
]
# ConfigurableTask.fewshot_context: our tasks override it and call the parent with these, in this order.
FEWSHOT_CONTEXT = ["self", "doc", "num_fewshot", "system_instruction", "apply_chat_template", "fewshot_as_multiturn",
                   "chat_template", "gen_prefix"]


def moved(what: str, where: str) -> str:
    from importlib.metadata import version

    return (f"lm_eval {version('lm_eval')}: {what}; lm_eval_baking uses it in {where}: adapt that code, or bound "
            "lm-eval below this version in setup.cfg")


def resolve(module: str, path: str):
    target = importlib.import_module(module)
    for part in path.split("."):
        target = getattr(target, part)
    return target


def accepted(target) -> set[str] | None:
    """The names `target` takes: a dataclass's fields, else its (or its __init__'s) parameters; None for **kwargs."""
    if dataclasses.is_dataclass(target):
        return {f.name for f in dataclasses.fields(target)}
    parameters = inspect.signature(target.__init__ if inspect.isclass(target) else target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()) and not parameters.keys() - {
            "self", "args", "kwargs"}:
        return None
    return set(parameters)


@pytest.mark.parametrize("module, path, names, where", API, ids=[f"{m}.{p}" for m, p, _, _ in API])
def test_the_lm_eval_names_we_use_still_exist(module, path, names, where):
    try:
        target = resolve(module, path)
    except (ImportError, AttributeError) as e:
        pytest.fail(moved(f"{module}.{path} is gone ({e})", where))
    takes = accepted(target) if names and callable(target) else None
    missing = [name for name in names if takes is not None and name not in takes]
    assert not missing, moved(f"{module}.{path} no longer takes {', '.join(missing)}", where)


def test_fewshot_context_still_takes_what_our_tasks_pass_on():
    from lm_eval.api.task import ConfigurableTask

    parameters = list(inspect.signature(ConfigurableTask.fewshot_context).parameters)
    assert parameters == FEWSHOT_CONTEXT, moved(
        f"ConfigurableTask.fewshot_context takes ({', '.join(parameters)}), not ({', '.join(FEWSHOT_CONTEXT)})",
        "evals/lm_tasks.py (MCKLTask and PersonaDriftTask override it)")


def test_the_lm_eval_command_still_takes_every_flag_we_write():
    from lm_eval_baking.core.harness import LmEvalRun

    run = LmEvalRun(base="BASE", adapter="ADAPTER", tasks=["baking_mckl"], system_instruction="S",
                    metadata={"bake": "B"}, dtype="float32", output_path="OUT", log_samples=True, num_fewshot=0,
                    include_path="TASKS")
    flags = sorted({word for word in run.argv() if word.startswith("--")})
    help_text = subprocess.run([sys.executable, "-m", "lm_eval", "run", "--help"], capture_output=True, text=True,
                               timeout=120).stdout
    missing = [flag for flag in flags if f"{flag} " not in help_text and f"{flag}\n" not in help_text
               and f"{flag}," not in help_text]
    assert not missing, moved(f"`lm_eval run` has no {', '.join(missing)}", "core/harness.py (LmEvalRun)")


def test_every_lm_eval_import_of_the_package_is_checked_above():
    checked = {(module, path.split(".")[0]) for module, path, _, _ in API} | {("lm_eval", None)}
    found = set()
    for file in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text("utf-8"))):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "lm_eval":
                found |= {(node.module, alias.name, file.relative_to(PACKAGE).as_posix()) for alias in node.names}
            elif isinstance(node, ast.Import):
                found |= {(alias.name, None, file.relative_to(PACKAGE).as_posix()) for alias in node.names
                          if alias.name.split(".")[0] == "lm_eval"}
    unchecked = sorted(f"{module}.{name or ''} ({where})" for module, name, where in found
                       if (module, name) not in checked)
    assert not unchecked, f"add to API in {Path(__file__).name}: {unchecked}"
