"""`lm-eval-baking pipeline RECIPE`: bake several prompts in cycles, pursue each, validate, one verdict.

    OUTPUT/references/STAGE/        held-out answers of the ORIGINAL base with each stage's prompt
    OUTPUT/stages/NN-STAGE-cC/      stage NN (cycle C): a pursuit whose rounds stack on every earlier stage
    OUTPUT/adapter/                 the whole chain as one standard PEFT adapter on the base
    OUTPUT/lm_eval/...              the real `lm_eval` CLI's results (--log_samples)
    OUTPUT/report/                  report.md / report.html
    OUTPUT/pipeline.json            the stages, each prompt's quality, every check and the verdict

Every step reuses what an earlier run finished (bakes resume from their
checkpoints, lm_eval runs are stamped), so a killed pipeline is simply run again.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..artifacts.lora import export_chain, load_chain
from ..artifacts.outputs import check_output
from ..compose.evaluators import QualityEvaluator
from ..compose.pursuit import pursue
from ..compose.sequence import reference_answers
from ..constants import ADAPTER_WEIGHTS, DRIFT_TASK, MCKL_TASK, PIPELINE_FORMAT, PIPELINE_RECORD
from ..core import models
from ..core.harness import LmEvalRun
from ..evals.drift import prepare_drift_data
from ..results.collect import collect
from ..results.gate import EXIT_CODES, Check, Threshold, format_checks, judge_forgetting_row, judge_value, overall
from ..results.report import build_report
from ..utils.atomic import write_json
from .lm_eval_runs import ensure_forgetting_data, run_lm_eval
from .recipe import Recipe

# MC-KL compares log-probs with teacher log-probs stored in fp32, so it runs in fp32 (bf16 rounding alone
# moves the prompted base off KL = 0); drift and forgetting only rank answers, and bf16 runs them faster.
MCKL_DTYPE, BEHAVIOUR_DTYPE = "float32", "bfloat16"


@dataclass
class StageResult:
    index: int
    cycle: int
    name: str
    folder: str
    rounds: list[dict]
    best_round: int
    stop_reason: str
    quality_after: dict[str, float] = field(default_factory=dict)
    """Every stage prompt's quality (vs the original base with that prompt) after this stage."""


@dataclass
class PipelineResult:
    output: Path
    adapter: Path
    stages: list[StageResult]
    checks: list[Check]
    verdict: str
    seconds: dict[str, float]
    report: Path

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def quality_kept(self) -> dict[str, dict]:
        """Per prompt: quality after its own (last) stage, after the whole pipeline, and the share kept."""
        kept = {}
        for name in {s.name for s in self.stages}:
            own = [s for s in self.stages if s.name == name][-1].quality_after[name]
            final = self.stages[-1].quality_after[name]
            kept[name] = {"after_own_stage": own, "after_pipeline": final,
                          "kept": final / own if own > 0 else None}
        return kept


def run_pipeline(recipe: Recipe, *, overwrite: bool = False, progress: bool = True) -> PipelineResult:
    """Run every step of `recipe` that is not done yet (see the module docstring)."""
    output = recipe.output
    check_output(output, overwrite=overwrite, what="pipeline",
                 same_run=lambda folder: (folder / PIPELINE_RECORD).is_file())
    seconds: dict[str, float] = {}
    steps = tqdm(total=4 + len(recipe.schedule()), desc="pipeline", unit="step", disable=not progress,
                 bar_format="{desc}: {n}/{total} steps |{bar:20}| {elapsed}")

    def timed(name: str):
        steps.set_description(f"pipeline: {name}")
        if progress:
            tqdm.write(f"\n=== {name}")
        return _Timer(name, seconds, steps)

    base = models.resolve_model(recipe.model)
    _write_record(output, recipe, "running")
    with timed("references"):
        references = _references(recipe, base, progress)
    stages, chain = [], []
    for index, (cycle, stage) in enumerate(recipe.schedule(), 1):
        with timed(f"stage {index}: {stage.name} (cycle {cycle})"):
            folder = output / "stages" / f"{index:02d}-{stage.name}-c{cycle}"
            pursuit = stage.pursuit
            result = pursue(recipe.stage_config(stage), folder, chain=chain, reference=references[stage.name],
                            max_rounds=pursuit.max_rounds if pursuit else 1,
                            min_improvement=pursuit.min_improvement if pursuit else 0.0,
                            evaluator=pursuit.evaluator if pursuit else "quality",
                            overwrite=overwrite, resume=True, progress=progress)
            chain += result.round_dirs
            stages.append(StageResult(index, cycle, stage.name, str(folder), [asdict(r) for r in result.rounds],
                                      result.best_round, result.stop_reason,
                                      _qualities(recipe, base, chain, references)))
    with timed("export"):
        adapter = export_chain(base, chain, output / "adapter", overwrite=True)
    with timed("lm_eval"):
        _validate(recipe, base, adapter, references)
    with timed("report"):
        report = build_report([output / "lm_eval", output / "stages"], output / "report",
                              title=f"lm-eval-baking pipeline: {recipe.source or output}",
                              forgetting_threshold_pct=(recipe.validation.forgetting.max_drop_pct
                                                        if recipe.validation.forgetting else None))
    checks = all_checks(recipe, adapter)
    steps.close()
    result = PipelineResult(output, adapter, stages, checks, overall(checks) if checks else "PASS", seconds,
                            report.html)
    _write_record(output, recipe, "done", result)
    return result


def _references(recipe: Recipe, base: str, progress: bool) -> dict[str, Path]:
    """Each stage prompt's held-out answers from the original base: quality is always measured against them."""
    model, tokenizer = models.load_model(base, device=recipe.bake.get("device", "auto"))
    sha = models.model_fingerprint(base)
    folders = {}
    for stage in recipe.stages:
        folder = recipe.output / "references" / stage.name
        reference_answers(folder, model, tokenizer, recipe.stage_config(stage), sha, progress)
        folders[stage.name] = folder
    return folders


def _qualities(recipe: Recipe, base: str, chain: list[Path], references: dict[str, Path]) -> dict[str, float]:
    model, tokenizer = load_chain(base, chain, device=recipe.bake.get("device", "auto"))
    return {name: QualityEvaluator.from_bake(folder)(model, tokenizer, 0) for name, folder in references.items()}


def _validate(recipe: Recipe, base: str, adapter: Path, references: dict[str, Path]) -> None:
    """The real lm_eval CLI: MC-KL for every stage's prompt, drift and forgetting as the recipe asks."""
    v, lm_eval_dir = recipe.validation, recipe.output / "lm_eval"
    common = dict(base=base, device=v.device, batch_size=v.batch_size, log_samples=True)
    weights = adapter / ADAPTER_WEIGHTS
    for stage in recipe.stages:
        reference = references[stage.name]
        heldout = reference / "data" / "heldout.jsonl"
        # The base and the prompted base on the same answers are the leaderboard's 0 and 1 of quality.
        for name, peft, prompt, inputs in (("adapter", str(adapter), None, [weights, heldout]),
                                           ("base", None, None, [heldout]), ("prompted-base", None, stage.prompt, [heldout])):
            run_lm_eval(LmEvalRun(tasks=[MCKL_TASK], adapter=peft, system_instruction=prompt, dtype=MCKL_DTYPE,
                                  metadata={"bake": str(reference)}, **common),
                        lm_eval_dir / "mckl" / stage.name / name, inputs, f"MC-KL of the {name} ({stage.name})")
    if v.drift:
        d = v.drift
        reference = references[d.stage]
        conversation = d.conversations
        prepare_drift_data(reference, [d.persona], conversation.turns, d.probes_at,
                           max_new_tokens=conversation.max_new_tokens, temperature=conversation.temperature,
                           seed=conversation.seed, conversations=conversation.conversations, progress=False)
        metadata = {"bake": str(reference), "sampled_answers": d.sampled_answers}
        prompt = next(s.prompt for s in recipe.stages if s.name == d.stage)
        docs = [reference / "data" / "drift_docs.jsonl"]
        run_lm_eval(LmEvalRun(tasks=[DRIFT_TASK], adapter=str(adapter), dtype=BEHAVIOUR_DTYPE, metadata=metadata,
                              **common), lm_eval_dir / "drift" / "adapter", [weights, *docs], "drift of the adapter")
        run_lm_eval(LmEvalRun(tasks=[DRIFT_TASK], system_instruction=prompt, dtype=BEHAVIOUR_DTYPE,
                              metadata=metadata, **common), lm_eval_dir / "drift" / "prompted-base", docs,
                    "drift of the prompted base")
    if v.forgetting:
        ensure_forgetting_data()
        metadata = {"max_docs": v.forgetting.max_docs}
        for name, peft, inputs in (("base", None, []), ("adapter", str(adapter), [weights])):
            run_lm_eval(LmEvalRun(tasks=v.forgetting.tasks, adapter=peft, dtype=BEHAVIOUR_DTYPE, metadata=metadata,
                                  apply_chat_template=False, **common),
                        lm_eval_dir / "forgetting" / name, inputs, f"forgetting of the {name}")


def all_checks(recipe: Recipe, adapter: Path) -> list[Check]:
    """Every check the recipe asks for, on the exported adapter, each three-way on its 95% CI."""
    v, lm_eval_dir, checks = recipe.validation, recipe.output / "lm_eval", []
    for stage in recipe.stages:
        row = _adapter_row(collect([lm_eval_dir / "mckl" / stage.name]), adapter)
        label = f"{stage.name} prompt"
        if v.min_quality is not None:
            checks.append(judge_value("quality", label, row.get("quality") if row else None, "min", v.min_quality))
        if v.max_kl is not None:
            checks.append(judge_value("kl", label, row.get("kl") if row else None, "max", v.max_kl))
    if v.drift:
        row = _adapter_row(collect([lm_eval_dir / "drift"]), adapter)
        docs = len(row.samples.get(DRIFT_TASK, {})) if row else None
        if v.drift.max_drift is not None:
            checks.append(judge_value("drift", f"{v.drift.persona} persona", row.get("drift") if row else None,
                                      "max", v.drift.max_drift, docs))
        if v.drift.min_adherence is not None:
            checks.append(judge_value("adherence", f"{v.drift.persona} persona", row.get("adherence") if row else None,
                                      "min", v.drift.min_adherence, docs))
    if v.forgetting:
        collection = collect([lm_eval_dir / "forgetting"], forgetting_threshold_pct=v.forgetting.max_drop_pct)
        row = _adapter_row(collection, adapter)
        threshold = Threshold("forgetting", "max", v.forgetting.max_drop_pct, "validation.forgetting.max_drop_pct")
        checks.append(judge_forgetting_row(row, threshold, collection, v.forgetting.tasks))
    return checks


def _adapter_row(collection, adapter: Path):
    return next((r for r in collection.rows if r.variant.adapter and Path(r.variant.adapter) == adapter), None)


def format_pipeline(result: PipelineResult) -> str:
    """What the command prints: each stage's pursuit, each prompt's quality kept, every check, the verdict."""
    lines = []
    for s in result.stages:
        lines += [f"stage {s.index}: {s.name} (cycle {s.cycle}), best round {s.best_round}, stopped: {s.stop_reason}",
                  "| round | score | improvement | with prompt again | held-out KL to teacher |",
                  "| ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {'start' if r['round'] == 0 else r['round']} | {r['score']:.4f} | {_fmt(r['improvement'], '+.1%')} "
                  f"| {_fmt(r['reprompted_score'], '.4f')} | {_fmt(r['heldout_kl'], '.4f')} |" for r in s.rounds]
        lines.append("")
    lines += ["quality of each prompt (1 - KL/KL_unprompted against the original base with that prompt):",
              "| prompt | after its own stage | after the pipeline | kept |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {name} | {q['after_own_stage']:.3f} | {q['after_pipeline']:.3f} | {_fmt(q['kept'], '.0%')} |"
              for name, q in sorted(result.quality_kept().items())]
    lines += ["", format_checks(result.checks) if result.checks else "no checks in the recipe's validation",
              "", f"adapter: {result.adapter}", f"report:  {result.report}",
              f"wall time: {sum(result.seconds.values()) / 60:.1f} min"]
    return "\n".join(lines)


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _write_record(output: Path, recipe: Recipe, status: str, result: PipelineResult | None = None) -> None:
    write_json(output / PIPELINE_RECORD, {
        "format": PIPELINE_FORMAT,
        "format_version": 1,
        "status": status,
        "recipe": str(recipe.source) if recipe.source else None,
        "stages": [asdict(s) for s in result.stages] if result else [],
        "quality_kept": result.quality_kept() if result else None,
        "checks": [asdict(c) for c in result.checks] if result else [],
        "verdict": result.verdict if result else None,
        "seconds": result.seconds if result else {},
        "adapter": "adapter" if result else None,
    })


class _Timer:
    def __init__(self, name: str, seconds: dict, bar):
        self.name, self.seconds, self.bar = name, seconds, bar

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.seconds[self.name] = time.perf_counter() - self.start
        if exc[0] is None:
            self.bar.update()
