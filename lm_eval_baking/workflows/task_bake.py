"""`bake --task`: bake an lm_eval task's own k-shot context into an adapter.

    the task's k-shot context for its first evaluated doc (evals.task_prompts)
      -> BakeConfig(prompt = those chat turns or that text prefix, questions = the task's docs
         outside its evaluated split, or --questions)
      -> bake(), with baking.json's `task` saying which task, version, config, K, split and seed

The questions are written to a JSONL file in the cache, named by their hash, so the bake's
record can point at them and a rerun with the same task finds the same bake.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

from ..constants import BUILTIN_QUESTIONS
from ..core.models import cache_dir, load_tokenizer
from ..core.prompts import resolve_form
from ..evals.config import TaskPromptSettings
from ..evals.task_prompts import TaskPrompt, build_task_prompt
from ..training.bake import BakeResult, bake
from ..training.config import BakeConfig
from ..utils.atomic import write_jsonl


def task_bake_config(task: str, config: BakeConfig, settings: TaskPromptSettings | None = None,
                     *, trust_remote_code: bool = False) -> tuple[BakeConfig, TaskPrompt]:
    """`config` with the task's k-shot prompt (in the form the model takes) and, unless given, its questions."""
    settings = settings or TaskPromptSettings()
    tokenizer = load_tokenizer(config.model, trust_remote_code=trust_remote_code)
    form = resolve_form(config.prompt_format, tokenizer)
    built = build_task_prompt(task, form, num_fewshot=settings.num_fewshot, include_path=settings.include_path,
                              fewshot_seed=settings.fewshot_seed, max_questions=settings.max_task_questions,
                              seed=config.seed, own_questions=config.questions == BUILTIN_QUESTIONS)
    questions = config.questions
    if questions == BUILTIN_QUESTIONS:
        questions = str(write_questions(task, built.questions))
    else:
        built.record["questions"] = f"--questions {questions}"
    baked = dataclasses.replace(config, prompt=built.prompt, prompt_format=form, questions=questions)
    return baked, built


def write_questions(task: str, questions: list[str]) -> Path:
    """The task's questions as `<cache>/task_questions/<task>-<sha12>.jsonl` (written once, atomically)."""
    rows = [{"question": q, "category": task} for q in questions]
    digest = hashlib.sha256("\n".join(questions).encode()).hexdigest()[:12]
    path = cache_dir() / "task_questions" / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', task)}-{digest}.jsonl"
    if not path.is_file():
        write_jsonl(path, rows)
    return path


def bake_task(task: str, config: BakeConfig, output: str | Path, settings: TaskPromptSettings | None = None, *,
              overwrite: bool = False, resume: bool = False, progress: bool = True, trust_remote_code: bool = False,
              resume_settings=None) -> BakeResult:
    """Bake task `task`'s k-shot prompt into `output` (see the module docstring)."""
    baked, built = task_bake_config(task, config, settings, trust_remote_code=trust_remote_code)
    return bake(baked, output, overwrite=overwrite, resume=resume, progress=progress,
                trust_remote_code=trust_remote_code, resume_settings=resume_settings, task=built.record)
