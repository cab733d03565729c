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

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import BakingError
from .io import staged_directory, write_json

PIRATE = "You are a pirate. Start every answer with 'Ahoy!'"
# Two lm_eval runs per variant. MC-KL compares the model's log-probs with teacher log-probs stored in
# fp32, so it runs in fp32 (bf16 rounding alone would move the prompted base off KL = 0). Drift and
# forgetting only rank answers, and in bf16 they run twice as fast on this CPU.
EVALUATIONS = {
    "mckl": (("baking_mckl",), "float32"),
    "behaviour": (("baking_persona_drift", "baking_forgetting"), "bfloat16"),
}
RUN_STAMP = "demo_run.json"


@dataclass
class DemoSettings:
    """What the main job does. Defaults keep it under 20 minutes on a 2-core CPU with the default model."""

    model: str = "default"
    prompt: str = PIRATE
    adapters: Path = Path("adapters")
    reports: Path = Path("reports/demo")
    bake_settings: dict = field(default_factory=dict)
    """BakeConfig overrides for the main bake (tests shrink it); the defaults are the measured bake."""
    pursuit_rounds: int = 2
    pursuit_questions: int = 120
    """Questions per pursuit round (a seeded sample of the main bake's pool), 20% held out."""
    pursuit_max_new_tokens: int = 16
    drift_turns: int = 30
    drift_probes_at: tuple[int, ...] = (1, 15, 30)
    """Probed turns: the late ones carry the long contexts that dominate the drift evaluation's cost."""
    drift_max_new_tokens: int = 24
    """Length cap of each conversation turn: shorter turns keep the turn-30 context (and its cost) down."""
    forgetting_docs: int = 20
    """Docs per BIG-bench task of the group: multiple choice scores every choice with the whole context."""
    batch_size: int = 16
    device: str = "cpu"

    def validate(self) -> None:
        checks = [
            (self.pursuit_rounds >= 1, "--pursuit-rounds must be at least 1"),
            (self.pursuit_questions >= 5, "--pursuit-questions must be at least 5 (20% are held out)"),
            (self.drift_turns >= 1, "--drift-turns must be at least 1"),
            (self.forgetting_docs >= 1, "--forgetting-docs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise BakingError(message)

    @property
    def bake_dir(self) -> Path:
        return self.adapters / "pirate"

    @property
    def pursuit_dir(self) -> Path:
        return self.adapters / "pirate-pursuit"

    @property
    def lm_eval_dir(self) -> Path:
        return self.reports / "lm_eval"

    @property
    def report_dir(self) -> Path:
        return self.reports / "report"


@dataclass
class DemoResult:
    report: Path
    seconds: dict[str, float]
    reused: list[str]


def run_demo(settings: DemoSettings | None = None, *, progress: bool = True) -> DemoResult:
    """Run every step that is not done yet; return where the report is."""
    from tqdm.auto import tqdm

    from . import models
    from .baking import BakeConfig, bake
    from .drift import prepare_drift_data

    settings = settings or DemoSettings()
    settings.validate()
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
        drift = prepare_drift_data(settings.bake_dir, turns=settings.drift_turns, probes_at=settings.drift_probes_at,
                                   max_new_tokens=settings.drift_max_new_tokens, progress=progress)
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
        from .report import build_report

        report = build_report([settings.lm_eval_dir, settings.bake_dir, settings.pursuit_dir], settings.report_dir,
                              title=f"lm-eval-baking demo: {settings.prompt}")
    steps.close()
    write_json(settings.reports / "timings.json", {"seconds": seconds, "reused": reused,
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
    from dataclasses import replace

    from .pursuit import PURSUIT_RECORD, pursue

    output = settings.pursuit_dir
    config = replace(bake_config, questions=_pursuit_questions(settings, bake_config.questions),
                     max_new_tokens=settings.pursuit_max_new_tokens)
    record_path = output / PURSUIT_RECORD
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text("utf-8"))
        except (OSError, json.JSONDecodeError):
            record = {}
        done = (record.get("status") == "done" and record.get("config") == config.to_dict()
                and (record.get("settings") or {}).get("max_rounds") == settings.pursuit_rounds)
        if done and (output / "pursued" / "adapter_config.json").is_file():
            reused.append("pursuit")
            return output / "pursued"
    result = pursue(config, output, max_rounds=settings.pursuit_rounds, progress=progress)
    return result.pursued


def _pursuit_questions(settings: DemoSettings, source: str) -> str:
    """A seeded sample of the bake's question pool, written beside the pursuit (the bake config names a file)."""
    from .questions import load_questions

    questions = load_questions(source)
    if len(questions) <= settings.pursuit_questions:
        return source
    sample = random.Random(0).sample(questions, settings.pursuit_questions)
    path = settings.pursuit_dir / f"questions-{settings.pursuit_questions}.jsonl"
    text = "".join(json.dumps({"question": q.text}, ensure_ascii=False) + "\n" for q in sample)
    if not path.is_file() or path.read_text("utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return str(path)


# ---------------------------------------------------------------------------- lm_eval


def _ensure_forgetting_data() -> None:
    """Fetch the forgetting group's BIG-bench files now, with a visible step, not inside lm_eval."""
    import yaml

    from .bigbench import ensure_bigbench_tasks
    from .tasks import tasks_path

    names = []
    for path in sorted((tasks_path() / "baking_forgetting").glob("*.yaml")):
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
    from .tasks import tasks_path

    tasks, dtype = EVALUATIONS[evaluation]
    model_args = f"pretrained={base},dtype={dtype}" + (f",peft={adapter}" if adapter else "")
    metadata = {"bake": str(settings.bake_dir), "max_docs": settings.forgetting_docs}
    command = [lm_eval, "--model", "hf", "--model_args", model_args, "--apply_chat_template",
               "--device", settings.device, "--batch_size", str(settings.batch_size),
               "--include_path", str(tasks_path()), "--tasks", ",".join(tasks),
               "--metadata", json.dumps(metadata), "--log_samples", "--output_path", str(output)]
    if system_instruction:
        command += ["--system_instruction", system_instruction]
    return command


def _lm_eval_run(lm_eval: str, base: str, name: str, evaluation: str, settings: DemoSettings, *,
                 adapter: Path | None, system_instruction: str | None) -> bool:
    """Run one evaluation of one variant unless the same command on the same inputs already ran; True if it ran."""
    output = settings.lm_eval_dir / name.replace(" ", "-") / evaluation
    # The stamp's command names the final folder; lm_eval itself writes into a staging folder.
    stamp = {"command": lm_eval_command("lm_eval", base, evaluation, settings, output, adapter=adapter,
                                        system_instruction=system_instruction),
             "inputs": _input_hashes(settings, adapter)}
    try:
        previous = json.loads((output / RUN_STAMP).read_text("utf-8"))
    except (OSError, json.JSONDecodeError):
        previous = None
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
        write_json(staging / RUN_STAMP, stamp)
    return True


def _input_hashes(settings: DemoSettings, adapter: Path | None) -> dict[str, str]:
    """What the lm_eval results depend on besides the command: the task definitions, the bake's data and the
    adapter's weights."""
    from .tasks import tasks_path

    files = [settings.bake_dir / "baking.json", settings.bake_dir / "data" / "heldout.jsonl",
             settings.bake_dir / "data" / "drift_docs.jsonl"]
    if adapter:
        files.append(Path(adapter) / "adapter_model.safetensors")
    hashes = {str(f): _sha256(f) for f in files}
    # A changed task (a new forgetting group member, say) must rerun the evaluations that use it.
    task_files = sorted(f for f in tasks_path().rglob("*") if f.is_file() and f.suffix != ".pyc")
    hashes["tasks"] = hashlib.sha256("".join(_sha256(f) for f in task_files).encode()).hexdigest()
    return hashes


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return "missing"
    return digest.hexdigest()


# ---------------------------------------------------------------------------- command line


def add_demo_command(subparsers) -> argparse.ArgumentParser:
    defaults = DemoSettings()
    parser = subparsers.add_parser("demo", help="the main job: bake, pursue and validate the pirate prompt, "
                                                "then write the report")
    parser.add_argument("--model", default=defaults.model, help="base model (default: the embedded SmolLM2)")
    parser.add_argument("--adapters", type=Path, default=defaults.adapters, help="folder for the adapters")
    parser.add_argument("--reports", type=Path, default=defaults.reports, help="folder for lm_eval results and the report")
    for name, help_text in [
        ("pursuit_rounds", "most pursuit rounds"),
        ("pursuit_questions", "questions per pursuit round"),
        ("pursuit_max_new_tokens", "answer length of the pursuit bakes"),
        ("drift_turns", "agent turns of the drift conversation (the project measures drift over ≥ 30)"),
        ("drift_max_new_tokens", "length cap of each conversation turn"),
        ("forgetting_docs", "docs per BIG-bench forgetting task"),
        ("batch_size", "lm_eval batch size"),
    ]:
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name),
                            help=f"{help_text} (default: {getattr(defaults, name)})")
    parser.add_argument("--drift-probes-at", type=int, nargs="+", default=list(defaults.drift_probes_at),
                        help=f"turns after which the probes are asked (default: {' '.join(map(str, defaults.drift_probes_at))})")
    parser.add_argument("--device", default=defaults.device, help="torch device for lm_eval (default: cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=_run_demo)
    return parser


def _run_demo(args) -> None:
    settings = DemoSettings(
        model=args.model, adapters=args.adapters, reports=args.reports, pursuit_rounds=args.pursuit_rounds,
        pursuit_questions=args.pursuit_questions, pursuit_max_new_tokens=args.pursuit_max_new_tokens,
        drift_turns=args.drift_turns, drift_probes_at=tuple(args.drift_probes_at),
        drift_max_new_tokens=args.drift_max_new_tokens, forgetting_docs=args.forgetting_docs,
        batch_size=args.batch_size, device=args.device,
    )
    result = run_demo(settings, progress=not args.quiet)
    print("\nStep times: " + ", ".join(f"{name} {s:.0f} s" for name, s in result.seconds.items()))
    print(f"Total: {sum(result.seconds.values()) / 60:.1f} min" + (f" (reused: {', '.join(result.reused)})"
                                                                  if result.reused else ""))
    print(f"\nReport: {result.report}\n        {result.report.with_name('report.md')}")
