"""An lm_eval task's k-shot context as one bake prompt, and the task's questions outside its evaluated split.

lm_eval builds the context itself here: we call the task's own `fewshot_context` (its sampler,
few-shot split, seed, delimiters and description) on the first doc it evaluates, and cut the
question off the end. In the chat form a recording `chat_template` callable catches the
messages lm_eval hands to the template (`--apply_chat_template --fewshot_as_multiturn`); in
the text form the context string is cut at the question.

Which examples: lm_eval's default sampler draws new examples for every doc from one seeded
stream, so no single prompt equals every doc's context. A bake bakes ONE prompt: the examples
lm_eval draws for the first evaluated doc with `--fewshot_random_seed` (default 1234). With
the `first_n` sampler every doc gets the same examples, and the baked prompt is every doc's.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field

from ..core.harness import tasks_path
from ..errors import BakingError
from ..utils.text import listed, quoted
from .config import TaskPromptSettings
from .lm_eval_glue import check_tasks

DEFAULT_FEWSHOT_SEED = TaskPromptSettings.fewshot_seed  # lm_eval's default --fewshot_random_seed
MIN_QUESTIONS = 10
SUPPORTED_OUTPUT_TYPES = ("generate_until", "multiple_choice")
# Task config keys that name this machine's files or this run's model, not the task: left out of its hash.
_RUN_SPECIFIC = ("config_source", "pretrained", "peft", "dtype", "device")


@dataclass
class TaskPrompt:
    """What a bake of a task's k-shot prompt needs: the prompt, its form, questions and the record."""

    task: str
    prompt: str | list[dict]
    """The text prefix (text form) or the chat messages before the question (chat form)."""
    form: str
    questions: list[str]
    record: dict = field(default_factory=dict)
    """baking.json's `task`: name, version, config hash, K, few-shot split, sampler and seed, splits used."""


def task_manager(names: list[str], include_path: str | None = None, metadata: dict | None = None):
    """A TaskManager over our task folder and `include_path`; lm_eval's own tasks are indexed only when needed.

    (Indexing lm_eval's ~15k task configs takes tens of seconds.)
    """
    from lm_eval.tasks import TaskManager

    paths = [str(tasks_path())] + ([str(include_path)] if include_path else [])
    ours = TaskManager(include_path=paths, include_defaults=False, metadata=metadata)
    if set(names) <= set(ours.all_tasks):
        return ours
    return TaskManager(include_path=paths, metadata=metadata)


def load_task(name: str, include_path: str | None = None, metadata: dict | None = None):
    """The one lm_eval task object named `name` (a group is refused: bake one of its tasks)."""
    manager = task_manager([name], include_path, metadata)
    check_tasks(manager, [name])
    loaded = manager.load([name])
    tasks = loaded["tasks"]
    if name not in tasks:
        raise BakingError(f"{quoted(name)} is a group of lm_eval tasks; bake one of them: {listed(sorted(tasks))}")
    return tasks[name]


def build_task_prompt(name: str, form: str, *, num_fewshot: int | None = None, include_path: str | None = None,
                      fewshot_seed: int = DEFAULT_FEWSHOT_SEED, max_questions: int | None = None, seed: int = 0,
                      metadata: dict | None = None, task=None, own_questions: bool = True) -> TaskPrompt:
    """The k-shot prompt lm_eval builds for task `name` (see the module docstring) and its questions.

    `form` is chat (as `--apply_chat_template --fewshot_as_multiturn`) or text (no chat template).
    Questions are the task's docs in every split but the evaluated one, without the few-shot
    examples themselves and without any text that also occurs in the evaluated split; at most
    `max_questions` of them (a seeded sample, in doc order). With `own_questions` False (the user passed
    --questions) the task's docs are not read for questions at all, so a task whose docs all sit in its
    evaluated and few-shot splits bakes too.
    """
    task = task or load_task(name, include_path, metadata)
    shots = num_fewshot if num_fewshot is not None else task.get_config("num_fewshot")
    _check_bakeable(task, name, shots)
    task.set_config(key="num_fewshot", value=shots)
    task.set_fewshot_seed(seed=fewshot_seed)
    first = task.eval_docs[0]
    question = task.doc_to_text(first)
    drawn = _recording_sampler(task)
    if form == "chat":
        turns: list[list[dict]] = []
        task.fewshot_context(doc=first, num_fewshot=shots, apply_chat_template=True, fewshot_as_multiturn=True,
                             chat_template=lambda messages, **_: turns.append(messages) or "")
        *prompt, last = turns[0]
        if last != {"role": "user", "content": question}:
            raise BakingError(f"task {quoted(name)} builds its last chat turn from more than the question; "
                              "it cannot be baked as a prompt before the question")
    elif form == "text":
        context = task.fewshot_context(doc=first, num_fewshot=shots, apply_chat_template=False)
        if not context.endswith(question):
            raise BakingError(f"task {quoted(name)}'s k-shot context does not end with the question; "
                              "it cannot be baked as a prefix before the question")
        prompt = context[:len(context) - len(question)]
    else:
        raise BakingError(f"a task prompt's form is chat or text, not {quoted(form)}")
    eval_split = task.config.test_split if task.has_test_docs() else task.config.validation_split
    questions, splits = _questions(task, name, eval_split, drawn, max_questions, seed) if own_questions else ([], [])
    record = {
        "name": name, "version": task.VERSION, "config_sha256": config_sha256(task), "num_fewshot": shots,
        "output_type": task.OUTPUT_TYPE, "form": form, "fewshot_split": task.fewshot_cfg.split,
        "fewshot_sampler": task.fewshot_cfg.sampler if isinstance(task.fewshot_cfg.sampler, str) else "custom",
        "fewshot_seed": fewshot_seed,
        "examples": "every doc's" if task.fewshot_cfg.sampler == "first_n" else "the first evaluated doc's",
        "eval_split": eval_split, "question_splits": splits, "questions": len(questions),
    }
    return TaskPrompt(name, prompt, form, questions, record)


def _check_bakeable(task, name: str, shots) -> None:
    if task.OUTPUT_TYPE not in SUPPORTED_OUTPUT_TYPES:
        raise BakingError(f"task {quoted(name)} is a {task.OUTPUT_TYPE} task; a bake needs questions the model "
                          f"answers: {' or '.join(SUPPORTED_OUTPUT_TYPES)}")
    if not isinstance(shots, int) or isinstance(shots, bool) or shots < 1:
        raise BakingError(f"task {quoted(name)} sets no few-shot count; pass --num-fewshot K (K >= 1)")
    if getattr(task, "multiple_input", 0):
        raise BakingError(f"task {quoted(name)} has one context per choice (multiple inputs); no single prompt "
                          "precedes its question, so it cannot be baked")
    if task.config.gen_prefix:
        raise BakingError(f"task {quoted(name)} starts the answer with a gen_prefix, which a bake prompt cannot "
                          "hold; bake a task without one")
    if getattr(task, "sampler", None) is None:
        raise BakingError(f"task {quoted(name)} has no few-shot examples (no fewshot_split or fewshot_config "
                          "samples); pick a task that has them")


def _recording_sampler(task) -> list[dict]:
    """The few-shot docs the task's sampler hands out from now on (so they are kept out of the questions)."""
    drawn: list[dict] = []
    sample = task.sampler.sample

    def recording(*args, **kwargs):
        docs = sample(*args, **kwargs)
        drawn.extend(docs)
        return docs

    task.sampler.sample = recording  # this task object only: it was loaded for this prompt
    return drawn


def _questions(task, name: str, eval_split: str, drawn: list[dict], max_questions: int | None,
               seed: int) -> tuple[list[str], list[str]]:
    evaluated = {task.doc_to_text(doc) for doc in task.eval_docs}
    examples = {task.doc_to_text(doc) for doc in drawn}
    splits = [split for split in task.dataset.keys() if split != eval_split]
    texts: dict[str, None] = {}
    for split in splits:
        docs = task.dataset[split]
        if task.config.process_docs is not None:
            docs = task.config.process_docs(docs)
        for doc in docs:
            text = task.doc_to_text(doc)
            if isinstance(text, str) and text not in evaluated and text not in examples:
                texts.setdefault(text)
    questions = list(texts)
    if len(questions) < MIN_QUESTIONS:
        where = f"split {listed(splits)}" if splits else "no split but the evaluated one"
        raise BakingError(f"task {quoted(name)} has {len(questions)} questions outside its evaluated split "
                          f"{quoted(eval_split)} and its few-shot examples ({where}), fewer than the "
                          f"{MIN_QUESTIONS} a bake needs; pass --questions FILE")
    spaced = next((q for q in questions if q != q.strip()), None)
    if spaced is not None:
        raise BakingError(f"task {quoted(name)}'s question {quoted(spaced)} starts or ends with whitespace, which a "
                          "question file cannot keep; pass --questions FILE")
    if max_questions is not None and len(questions) > max_questions:
        keep = sorted(random.Random(seed).sample(range(len(questions)), max_questions))
        questions = [questions[i] for i in keep]
    return questions, splits


def config_sha256(task) -> str:
    """sha256 of the task's config as lm_eval dumps it (functions by their source), without run-specific keys."""
    config = task.dump_config()
    metadata = {k: v for k, v in (config.get("metadata") or {}).items() if k not in _RUN_SPECIFIC}
    config = {**config, "metadata": metadata}
    text = json.dumps(config, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()
