"""What a base-model result depends on, as the key of its entry in the base-model store (artifacts/base_store.py).

`forgetting` and `cross-task` score the base model in-process, task by task (`ScoresStore`); the pipeline runs
the lm_eval CLI on it (`lm_eval_run_inputs`, used by workflows/lm_eval_runs.run_lm_eval). Either key holds:

- the model: the sha256 of its config and weights (core.models.model_fingerprint, cached by size and mtime) and
  of every other file of its folder (tokenizer, chat template), and the path it was loaded from;
- the settings: tasks, few-shot count, chat template, system instruction, batch size, dtype, device, limit,
  lm_eval's seeds, metadata (for the CLI: the whole command line);
- our task definitions (every file of tasks/), the task folder given by --include_path, and the data files:
  each BIG-bench task.json our tasks read, and every file of a bake folder named by `--metadata bake`;
- the code that scores: the versions of lm_eval, transformers, torch, peft and Python, and the sha256 of this
  package's evals/ and core/ sources.

Any difference is another key, so a stored result is never reused for anything it was not made by.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from functools import cached_property, lru_cache
from pathlib import Path

import yaml

from ..artifacts import base_store
from ..constants import BASE_RUN_BAKE, BASE_RUN_DIR, BASE_SCORES, LM_EVAL_RUN_STAMP, MANIFEST
from ..core import models
from ..core.harness import LmEvalRun, tasks_path
from ..evals.bigbench import task_file
from ..utils.hashing import sha256_file
from ..utils.text import first_line
from ..utils.versions import library_versions

STORE_VERSION = 1
"""Raised when what an entry holds, or how its key is made, changes: older entries are then never read."""
# simple_evaluate's seeds (random, numpy, torch, few-shot sampling); the CLI's defaults are the same.
LM_EVAL_SEEDS = {"random": 0, "numpy": 1234, "torch": 1234, "fewshot": 1234}


def common_inputs(base: str) -> dict:
    """What every base-model result depends on: the model, our tasks and scoring code, the libraries."""
    return {"store_version": STORE_VERSION, "model": {"path": str(base), **models.model_identity(base)},
            "task_definitions": folder_hash(tasks_path()), "code": code_hash(), "versions": library_versions(),
            "seeds": LM_EVAL_SEEDS}


def task_data(names: list[str], include_path: str | None = None) -> dict:
    """sha256 of the data files the named tasks read (BIG-bench task.json files), and of an --include_path folder."""
    configs = _our_task_configs()
    data, todo, seen = {}, list(names), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        config = configs.get(name, {})
        todo += [t for t in config.get("task") or [] if isinstance(t, str)] if config.get("group") else []
        bigbench = (config.get("dataset_kwargs") or {}).get("task_name")
        if bigbench:
            data[f"bigbench:{bigbench}"] = sha256_file(task_file(bigbench), missing="missing")
    if include_path:
        data["include_path"] = folder_hash(Path(include_path))
    return dict(sorted(data.items()))


def lm_eval_run_inputs(run: LmEvalRun, inputs: list[Path]) -> dict:
    """The key of an lm_eval CLI run of the base model: its command (the bake named in --metadata by the hash of
    its files, not its path), the sha256 of its input files, and `common_inputs`."""
    metadata = dict(run.metadata or {})
    bake = metadata.pop("bake", None)
    command = LmEvalRun(**{**run.__dict__, "metadata": metadata or None, "output_path": None,
                           "executable": "lm_eval", "include_path": None}).shell()
    return {**common_inputs(run.base), "what": "lm_eval run", "command": command,
            "include_path": folder_hash(Path(run.include_path)) if run.include_path else None,
            "bake": folder_hash(Path(bake)) if bake else None, "data": task_data(list(run.tasks)),
            "inputs": sorted(sha256_file(f, missing="missing") for f in inputs)}


class ScoresStore:
    """The store's entries of one base model's in-process per-task scores (`evals.forgetting.TaskScores`), for
    `evals.forgetting.score_models` and cross-task: `get(task)` a stored one, `put(task, scores)` a new one."""

    def __init__(self, base: str, settings: dict, include_path: str | None = None):
        self.base, self.settings, self.include_path = base, settings, include_path
        self.reused: list[str] = []

    @cached_property
    def common(self) -> dict | None:
        # Silent: a model whose files cannot be read fails the run in its own line when lm_eval loads it.
        return key_or_none(lambda: common_inputs(self.base), quiet=True)

    def inputs(self, task: str, **more) -> dict:
        return {**self.common, "what": "per-doc scores", "task": task, "settings": {**self.settings, **more},
                "data": task_data([task], self.include_path)}

    def get(self, task: str, **more):
        from ..evals.forgetting import TaskScores

        if self.common is None:
            return None
        entry = base_store.find(self.inputs(task, **more))
        if entry is None:
            return None
        scores = TaskScores.from_dict(json.loads((entry / BASE_SCORES).read_text("utf-8")))
        self.reused.append(f"{task}" + "".join(f", {k}={v}" for k, v in more.items()))
        print(f"base model on {self.reused[-1]}: reused from the base-model store ({entry})", flush=True)
        return scores

    def put(self, task: str, scores, **more) -> None:
        if self.common is None:
            return
        data = json.dumps(scores.to_dict(), indent=2, ensure_ascii=False)
        base_store.put(self.inputs(task, **more), "per-doc scores",
                       lambda folder: (folder / BASE_SCORES).write_text(data, "utf-8"))


def key_or_none(make, *, quiet: bool = False):
    """`make()`, the inputs of a key; None, and one warning line, when the model's files cannot be read for it."""
    try:
        return make()
    except (OSError, ValueError) as e:
        if not quiet:
            base_store.warn(f"cannot fingerprint the base model for the base-model store ({first_line(e, 120)}); "
                            "its results are neither reused nor stored in this run")
        return None


def store_run(inputs: dict, run: LmEvalRun, output: Path) -> None:
    """Keep an lm_eval run's output folder (`output`, just written) in the store under `inputs`, with the bake
    folder its --metadata named (the key holds that folder's files, not its path)."""
    def fill(folder: Path) -> None:
        shutil.copytree(output, folder / BASE_RUN_DIR, ignore=shutil.ignore_patterns(MANIFEST, LM_EVAL_RUN_STAMP))
        (folder / BASE_RUN_BAKE).write_text(json.dumps((run.metadata or {}).get("bake")), "utf-8")

    base_store.put(inputs, "lm_eval run", fill)


def copy_run(entry: Path, run: LmEvalRun, staging: Path) -> None:
    """An entry's lm_eval output into a run's staging folder: hard links where the filesystem allows, and the
    files that name the bake folder the stored run read (results, samples) rewritten to name this run's."""
    stored = json.loads((entry / BASE_RUN_BAKE).read_text("utf-8"))
    bake = (run.metadata or {}).get("bake")

    def link_or_copy(source: str, target: str) -> None:
        if stored and bake and stored != bake and Path(source).suffix in (".json", ".jsonl"):
            text = Path(source).read_text("utf-8")
            Path(target).write_text(text.replace(json.dumps(stored)[1:-1], json.dumps(bake)[1:-1]), "utf-8")
            return
        try:
            Path(target).hardlink_to(source)
        except OSError:
            shutil.copy2(source, target)

    shutil.copytree(entry / BASE_RUN_DIR, staging, dirs_exist_ok=True, copy_function=link_or_copy)


def folder_hash(folder: Path) -> str:
    """sha256 over every file of `folder` (names and contents; compiled Python aside)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".pyc"):
        digest.update(file.relative_to(folder).as_posix().encode() + b"\0" + sha256_file(file).encode())
    return digest.hexdigest()


@lru_cache(maxsize=1)
def code_hash() -> str:
    """sha256 of the sources that score (this package's evals/ and core/): a change there is never reused."""
    package = Path(__file__).resolve().parents[1]
    return hashlib.sha256("".join(folder_hash(package / name) for name in ("evals", "core")).encode()).hexdigest()


def _our_task_configs() -> dict[str, dict]:
    """Our task YAMLs by task (or group) name."""
    class TaskYaml(yaml.SafeLoader):  # lm_eval's `!function` tags are not ours to resolve here
        pass

    TaskYaml.add_multi_constructor("!", lambda loader, suffix, node: None)
    configs = {}
    for path in sorted(tasks_path().rglob("*.yaml")):
        config = yaml.load(path.read_text("utf-8"), Loader=TaskYaml) or {}
        name = config.get("group") or config.get("task")
        if isinstance(name, str):
            configs[name] = config
    return configs
