"""Running the real `lm_eval` CLI from a workflow: once per evaluation, reused while nothing it reads changed.

Each run writes into its own folder through a staging folder, with a stamp of
the command and of the sha256 of every file it depends on (the adapter's
weights, the bake data the task reads, our task definitions). A second run
with the same stamp is skipped, so a rerun of a killed pipeline redoes only
what did not finish, and a changed task file reruns what uses it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import yaml

from ..artifacts import base_store
from ..artifacts.manifest import owned_directory
from ..artifacts.records import LmEvalRunStamp
from ..constants import FORGETTING_GROUP
from ..core.harness import LmEvalRun, tasks_path
from ..errors import BakingError
from ..evals.bigbench import ensure_bigbench_tasks
from ..utils.hashing import sha256_file
from ..utils.processes import run_child
from .base_reuse import copy_run, key_or_none, lm_eval_run_inputs, store_run

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def lm_eval_executable() -> str:
    """The `lm_eval` installed beside this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("lm_eval")
    found = str(beside) if beside.is_file() else shutil.which("lm_eval")
    if not found:
        raise BakingError("the lm_eval command is not installed; run `make setup` or `pip install lm-eval==0.4.13`")
    return found


def run_lm_eval(run: LmEvalRun, output: Path, inputs: list[Path], label: str, *, reuse_base: bool = False) -> bool:
    """Run `run` into `output` unless the same command already ran on the same inputs; True if it ran.

    `run.output_path` is ignored: lm_eval writes into a staging folder that becomes `output`.
    With `reuse_base` (for a run of the base model, no adapter), a result of the same run in the base-model
    store (workflows/base_reuse.py) is copied into `output` instead, and a result run here is stored.
    """
    stamp = LmEvalRunStamp(command=LmEvalRun(**{**run.__dict__, "output_path": str(output), "executable": "lm_eval",
                                                "include_path": None}).shell(),
                           inputs=input_hashes(inputs))
    done = LmEvalRunStamp.from_pretrained_or_none(output)
    if done and (done.command, done.inputs) == (stamp.command, stamp.inputs) and any(output.rglob("results_*.json")):
        return False
    key = key_or_none(lambda: lm_eval_run_inputs(run, inputs)) if reuse_base and run.adapter is None else None
    entry = base_store.find(key) if key else None
    if entry is not None:
        with owned_directory(output, "lm_eval run") as staging:
            copy_run(entry, run, staging)
            stamp.reused_from = str(entry)
            stamp.save_pretrained(staging)
        print(f"{label}: reused from the base-model store ({entry})", flush=True)
        return False
    with owned_directory(output, "lm_eval run") as staging:
        argv = LmEvalRun(**{**run.__dict__, "output_path": str(staging), "executable": lm_eval_executable()}).argv()
        sys.stdout.flush()
        code = run_child(argv, env={**os.environ, **OFFLINE})  # ends with us, even on kill -9 (Linux)
        if code != 0:
            raise BakingError(f"lm_eval failed for {label} (exit status {code}; its output is above); fix that and "
                              "rerun: finished steps are reused")
        stamp.save_pretrained(staging)
    if key:
        store_run(key, run, output)
    return True


def input_hashes(inputs: list[Path]) -> dict[str, str]:
    """What lm_eval results depend on besides the command: the given files and our task definitions."""
    hashes = {str(f): sha256_file(f, missing="missing") for f in inputs}
    # A changed task (a new forgetting group member, say) must rerun the evaluations that use it.
    task_files = sorted(f for f in tasks_path().rglob("*") if f.is_file() and f.suffix != ".pyc")
    hashes["tasks"] = hashlib.sha256("".join(sha256_file(f) for f in task_files).encode()).hexdigest()
    return hashes


def ensure_forgetting_data() -> None:
    """Fetch the forgetting group's BIG-bench files now, with a visible step, not inside lm_eval.

    Only the group's members: the folder's standalone tasks need the archive PyPI no longer serves."""
    folder = tasks_path() / FORGETTING_GROUP
    members = set(yaml.safe_load((folder / f"{FORGETTING_GROUP}.yaml").read_text("utf-8"))["task"])
    names = []
    for path in sorted(folder.glob("*.yaml")):
        config = yaml.safe_load(path.read_text("utf-8"))
        task_name = (config.get("dataset_kwargs") or {}).get("task_name")
        if task_name and config.get("task") in members:
            names.append(task_name)
    ensure_bigbench_tasks(names)
