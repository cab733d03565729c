"""The main job (`make demo` / `lm-eval-baking demo`): bake, pursue and validate the pirate prompt end to end.

Steps, each reusing its output when that is already on disk (a second run only
rebuilds the report):

1. prepare the base model (the embedded default: GGUF -> HF directory once);
2. bake the pirate prompt into `adapters/pirate`;
3. prompt pursuit of the same prompt into `adapters/pirate-pursuit` (small
   settings: the pursuit bakes are extra, on top of the main bake);
4. persona-drift conversations for the bake (`drift.prepare_drift_data`);
5. the BIG-bench files of the forgetting group (downloaded once);
6. the real `lm_eval` CLI, once per variant (base, prompted base, baked,
   pursued), on baking_mckl, baking_persona_drift and baking_forgetting;
7. the report (`report.build_report`) into `reports/demo/report/`.

Every variant is scored on the same docs: `--metadata bake=adapters/pirate`
points all three tasks at the main bake's held-out answers and drift
conversations, and `max_docs` caps each BIG-bench task (a seeded sample, the
same for every variant).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from ..artifacts.bake_dir import BakeDir
from ..compose.pursuit import pursue
from ..constants import (
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, DEMO_RUN_STAMP, DEMO_TIMINGS, DRIFT_TASK, FORGETTING_GROUP, MCKL_TASK,
    PURSUED_DIR, PURSUIT_RECORD,
)
from ..core import models
from ..core.harness import LmEvalRun, tasks_path
from ..core.questions import load_questions
from ..errors import BakingError
from ..evals.bigbench import ensure_bigbench_tasks
from ..evals.drift import prepare_drift_data
from ..results.report import build_report
from ..training.bake import bake
from ..training.config import BakeConfig
from ..utils.atomic import staged_directory, write_json, write_text
from ..utils.hashing import sha256_file
from ..utils.jsonl import read_json_object
from .config import DemoSettings
# Two lm_eval runs per variant. MC-KL compares the model's log-probs with teacher log-probs stored in
# fp32, so it runs in fp32 (bf16 rounding alone would move the prompted base off KL = 0). Drift and
# forgetting only rank answers, and in bf16 they run twice as fast on this CPU.
EVALUATIONS = {
    "mckl": ((MCKL_TASK,), "float32"),
    "behaviour": ((DRIFT_TASK, FORGETTING_GROUP), "bfloat16"),
}


@dataclass
class DemoResult:
    report: Path
    seconds: dict[str, float]
    reused: list[str]


def run_demo(settings: DemoSettings | None = None, *, progress: bool = True) -> DemoResult:
    """Run every step that is not done yet; return where the report is."""
    settings = settings or DemoSettings()
    lm_eval = lm_eval_executable()
    seconds: dict[str, float] = {}
    reused: list[str] = []
    variants = ["base", "prompted base", "baked", "pursued"]
    steps = tqdm(total=6 + len(variants), desc="demo", unit="step", disable=not progress,
                 bar_format="{desc}: {n}/{total} steps |{bar:20}| {elapsed}")

    def step(name: str):
        steps.set_description(f"demo: {name}")
        if progress:
            tqdm.write(f"\n=== {name}")
        return _Timer(name, seconds, steps)

    with step("base model"):
        base = models.resolve_model(settings.model)
    with step("bake"):
        config = BakeConfig(prompt=settings.prompt, model=settings.model, **settings.bake_settings)
        result = bake(config, settings.bake_dir, progress=progress)
        if result.reused:
            reused.append("bake")
    with step("pursuit"):
        pursued = _pursue(settings, config, progress, reused)
    with step("drift conversations"):
        drift = prepare_drift_data(settings.bake_dir, [settings.drift_persona], turns=settings.drift_turns,
                                   probes_at=settings.drift_probes_at, max_new_tokens=settings.drift_max_new_tokens,
                                   conversations=settings.drift_conversations, progress=progress)
        if not drift.generated:
            reused.append("drift conversations")
    with step("forgetting data"):
        _ensure_forgetting_data()
    runs = {
        "base": dict(adapter=None, system_instruction=None),
        "prompted base": dict(adapter=None, system_instruction=settings.prompt),
        "baked": dict(adapter=settings.bake_dir, system_instruction=None),
        "pursued": dict(adapter=pursued, system_instruction=None),
    }
    for name in variants:
        with step(f"lm_eval: {name}"):
            for evaluation in EVALUATIONS:
                if not _lm_eval_run(lm_eval, base, name, evaluation, settings, **runs[name]):
                    reused.append(f"lm_eval: {name} ({evaluation})")
    with step("report"):
        report = build_report([settings.lm_eval_dir, settings.bake_dir, settings.pursuit_dir], settings.report_dir,
                              title=f"lm-eval-baking demo: {settings.prompt}")
    steps.close()
    write_json(settings.reports / DEMO_TIMINGS, {"seconds": seconds, "reused": reused,
                                                   "settings": _jsonable(asdict(settings))})
    return DemoResult(report=report.html, seconds=seconds, reused=reused)


class _Timer:
    def __init__(self, name: str, seconds: dict, bar):
        self.name, self.seconds, self.bar = name, seconds, bar

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.seconds[self.name] = time.perf_counter() - self.start
        if exc[0] is None:
            self.bar.update()


def _jsonable(data):
    return json.loads(json.dumps(data, default=str))


# ---------------------------------------------------------------------------- pursuit


def _pursue(settings: DemoSettings, bake_config, progress: bool, reused: list[str]) -> Path:
    """Pursue the prompt with fewer, shorter answers than the main bake; reuse a finished pursuit."""
    output = settings.pursuit_dir
    config = replace(bake_config, questions=_pursuit_questions(settings, bake_config.questions),
                     max_new_tokens=settings.pursuit_max_new_tokens)
    record = read_json_object(output / PURSUIT_RECORD) or {}
    done = (record.get("status") == "done" and record.get("config") == config.to_dict()
            and (record.get("settings") or {}).get("max_rounds") == settings.pursuit_rounds)
    if done and (output / PURSUED_DIR / ADAPTER_CONFIG).is_file():
        reused.append("pursuit")
        return output / PURSUED_DIR
    result = pursue(config, output, max_rounds=settings.pursuit_rounds, progress=progress)
    return result.pursued


def _pursuit_questions(settings: DemoSettings, source: str) -> str:
    """A seeded sample of the bake's question pool, written beside the pursuit (the bake config names a file)."""
    questions = load_questions(source)
    if len(questions) <= settings.pursuit_questions:
        return source
    sample = random.Random(0).sample(questions, settings.pursuit_questions)
    path = settings.pursuit_dir / f"questions-{settings.pursuit_questions}.jsonl"
    text = "".join(json.dumps({"question": q.text}, ensure_ascii=False) + "\n" for q in sample)
    if not path.is_file() or path.read_text("utf-8") != text:
        write_text(path, text)
    return str(path)


# ---------------------------------------------------------------------------- lm_eval


def _ensure_forgetting_data() -> None:
    """Fetch the forgetting group's BIG-bench files now, with a visible step, not inside lm_eval."""
    names = []
    for path in sorted((tasks_path() / FORGETTING_GROUP).glob("*.yaml")):
        task_name = (yaml.safe_load(path.read_text("utf-8")).get("dataset_kwargs") or {}).get("task_name")
        if task_name:
            names.append(task_name)
    ensure_bigbench_tasks(names)


def lm_eval_executable() -> str:
    """The `lm_eval` installed beside this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("lm_eval")
    found = str(beside) if beside.is_file() else shutil.which("lm_eval")
    if not found:
        raise BakingError("the lm_eval command is not installed; run `make setup` or `pip install lm-eval==0.4.13`")
    return found


def lm_eval_command(lm_eval: str, base: str, evaluation: str, settings: DemoSettings, output: Path, *,
                    adapter: Path | None, system_instruction: str | None) -> list[str]:
    tasks, dtype = EVALUATIONS[evaluation]
    return LmEvalRun(base=base, tasks=tasks, adapter=str(adapter) if adapter else None,
                     system_instruction=system_instruction, dtype=dtype, device=settings.device,
                     batch_size=settings.batch_size, log_samples=True, output_path=str(output),
                     metadata={"bake": str(settings.bake_dir), "max_docs": settings.forgetting_docs,
                               "sampled_answers": settings.drift_sampled_answers},
                     executable=lm_eval).argv()


def _lm_eval_run(lm_eval: str, base: str, name: str, evaluation: str, settings: DemoSettings, *,
                 adapter: Path | None, system_instruction: str | None) -> bool:
    """Run one evaluation of one variant unless the same command on the same inputs already ran; True if it ran."""
    output = settings.lm_eval_dir / name.replace(" ", "-") / evaluation
    # The stamp's command names the final folder; lm_eval itself writes into a staging folder.
    stamp = {"command": lm_eval_command("lm_eval", base, evaluation, settings, output, adapter=adapter,
                                        system_instruction=system_instruction),
             "inputs": _input_hashes(settings, adapter)}
    previous = read_json_object(output / DEMO_RUN_STAMP)
    if previous == stamp and any(output.rglob("results_*.json")):
        return False
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with staged_directory(output, replace=True) as staging:
        command = lm_eval_command(lm_eval, base, evaluation, settings, staging, adapter=adapter,
                                  system_instruction=system_instruction)
        sys.stdout.flush()
        code = subprocess.run(command, env=env).returncode
        if code != 0:
            raise BakingError(f"lm_eval failed for the {name} variant ({evaluation}; exit status {code}; its output is above); "
                              "fix that and rerun the demo: finished steps are reused")
        write_json(staging / DEMO_RUN_STAMP, stamp)
    return True


def _input_hashes(settings: DemoSettings, adapter: Path | None) -> dict[str, str]:
    """What the lm_eval results depend on besides the command: the task definitions, the bake's data and the
    adapter's weights."""
    bake = BakeDir(settings.bake_dir)
    files = [bake.record_path, bake.heldout_path, bake.drift_docs_path]
    if adapter:
        files.append(Path(adapter) / ADAPTER_WEIGHTS)
    hashes = {str(f): sha256_file(f, missing="missing") for f in files}
    # A changed task (a new forgetting group member, say) must rerun the evaluations that use it.
    task_files = sorted(f for f in tasks_path().rglob("*") if f.is_file() and f.suffix != ".pyc")
    hashes["tasks"] = hashlib.sha256("".join(sha256_file(f) for f in task_files).encode()).hexdigest()
    return hashes
