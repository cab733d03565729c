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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from ..artifacts.lora import export_chain, load_chain
from ..artifacts.outputs import check_apart, check_output, made_by_us
from ..artifacts.records import PipelineRecord
from ..compose.behaviour import CompositionTracker, format_behaviour_table
from ..compose.evaluators import QualityEvaluator, evaluator_name, resolve_evaluator
from ..compose.pursuit import RoundScore, pursue, round_change
from ..compose.sequence import reference_answers
from ..compose.targets import BakedStage, BaseTeacher, stage_target
from ..constants import ADAPTER_WEIGHTS, DRIFT_TASK, JOINT_REFERENCE, MCKL_TASK
from ..core import models
from ..core.harness import LmEvalRun
from ..core.stats import compare_paired
from ..core.verdicts import EXIT_CODES, Check
from ..evals.drift import prepare_drift_data
from ..results.collect import collect
from ..results.gate import Threshold, format_checks, judge_forgetting_row, judge_value, overall
from ..results.report import build_report
from ..results.rows import Measurement
from ..training.plan import check_before_work
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
    joint_quality: float | None = None
    """The same against the original base prompted with every stage's prompt joined (the composition's target)."""
    target: str = "start"
    """Who read round 1's prompt: 'start' (the chain so far) or 'base' (the original base)."""
    behaviour_after: dict[str, float] = field(default_factory=dict)
    """Each "STAGE:PERSONA" check's score (held-out questions, no prompt) after this stage."""


@dataclass
class PipelineResult:
    output: Path
    adapter: Path
    stages: list[StageResult]
    checks: list[Check]
    verdict: str
    seconds: dict[str, float]
    report: Path
    behaviour: dict[str, dict] = field(default_factory=dict)
    """Per "STAGE:PERSONA" check: what the composed adapter kept (compose/behaviour.py), with paired CIs."""
    pursued: dict[str, dict] = field(default_factory=dict)
    """Per pursued stage: its evaluator's score of the adapter minus the prompted base's, paired."""

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def quality_kept(self) -> dict[str, dict]:
        """Per prompt: quality after its own (last) stage and after the whole pipeline (the share kept is
        judged on behaviour, question by question: `behaviour`)."""
        kept = {}
        for name in {s.name for s in self.stages}:
            own = [s for s in self.stages if s.name == name][-1].quality_after[name]
            kept[name] = {"after_own_stage": own, "after_pipeline": self.stages[-1].quality_after[name]}
        return kept


def run_pipeline(recipe: Recipe, *, overwrite: bool = False, progress: bool = True) -> PipelineResult:
    """Run every step of `recipe` that is not done yet (see the module docstring)."""
    output = recipe.output
    check_apart(output, [recipe.source, recipe.model, recipe.bake.get("questions"),
                         *(s.source for s in recipe.stages if s.source != "prompt")])
    check_output(output, overwrite=overwrite, what="pipeline",
                 same_run=lambda folder: made_by_us(folder) == "pipeline")
    check_before_work([recipe.stage_config(stage) for stage in recipe.stages], output)
    seconds: dict[str, float] = {}
    steps = tqdm(total=5 + len(recipe.schedule()), desc="pipeline", unit="step", disable=not progress,
                 bar_format="{desc}: {n}/{total} steps |{bar:20}| {elapsed}")

    def timed(name: str):
        steps.set_description(f"pipeline: {name}")
        if progress:
            tqdm.write(f"\n=== {name}")
        return _Timer(name, seconds, steps)

    base = models.resolve_model(recipe.model)
    device = recipe.bake.get("device", "auto")
    _write_record(output, recipe, "running")
    with timed("references"):
        model, tokenizer = models.load_model(base, device=device)
        references = _references(recipe, base, model, tokenizer, progress)
        tracker = CompositionTracker({s.name: s.prompt for s in recipe.stages}, recipe.stage_config(recipe.stages[0]),
                                     recipe.joint_prompt(), model, tokenizer)
    stages, chain, earlier = [], [], []
    base_teacher = BaseTeacher(base, device)
    for index, (cycle, stage) in enumerate(recipe.schedule(), 1):
        with timed(f"stage {index}: {stage.name} (cycle {cycle})"):
            folder = output / "stages" / f"{index:02d}-{stage.name}-c{cycle}"
            pursuit = stage.pursuit
            target = stage_target(recipe.compose, recipe.stage_config(stage), earlier, chain)
            result = pursue(recipe.stage_config(stage), folder, chain=target.start, reference=references[stage.name],
                            max_rounds=pursuit.max_rounds if pursuit else 1,
                            min_improvement=pursuit.min_improvement if pursuit else 0.0,
                            evaluator=pursuit.evaluator if pursuit else "quality",
                            overwrite=overwrite, resume=True, progress=progress,
                            target=target, target_model=base_teacher.get(target))
            chain += result.round_dirs
            earlier.append(BakedStage(stage.prompt, result.round_dirs))
            model, tokenizer = load_chain(base, chain, device=device)
            qualities = {name: QualityEvaluator.from_bake(folder)(model, tokenizer, 0)
                         for name, folder in references.items()}
            stages.append(StageResult(index, cycle, stage.name, str(folder), [asdict(r) for r in result.rounds],
                                      result.best_round, result.stop_reason,
                                      {name: q for name, q in qualities.items() if name != JOINT_REFERENCE},
                                      qualities.get(JOINT_REFERENCE), target.target,
                                      tracker.after_stage(model, tokenizer, stage.name)))
    with timed("pursued stages against the prompt"):
        pursued = _pursued_against_prompt(recipe, base_teacher, model, tokenizer, references)
    with timed("export"):
        adapter = export_chain(base, chain, output / "adapter", overwrite=True)
    with timed("lm_eval"):
        _validate(recipe, base, adapter, references, progress)
    with timed("report"):
        report = build_report([output / "lm_eval", output / "stages"], output / "report",
                              title=f"lm-eval-baking pipeline: {recipe.source or output}",
                              max_forgetting_drop_pct=(recipe.validation.forgetting.max_forgetting_drop_pct
                                                       if recipe.validation.forgetting else None))
    checks = all_checks(recipe, adapter, pursued)
    steps.close()
    result = PipelineResult(output, adapter, stages, checks, overall(checks), seconds,
                            report.html, tracker.summaries(), pursued)
    _write_record(output, recipe, "done", result)
    return result


def _references(recipe: Recipe, base: str, model, tokenizer, progress: bool) -> dict[str, Path]:
    """Each stage prompt's held-out answers from the original base, and (several stages) those of the base with
    every prompt joined, under JOINT_REFERENCE: quality is always measured against them."""
    sha = models.model_fingerprint(base)
    folders = {}
    for stage in recipe.stages:
        folder = recipe.output / "references" / stage.name
        reference_answers(folder, model, tokenizer, recipe.stage_config(stage), sha, progress)
        folders[stage.name] = folder
    if len(recipe.stages) > 1:
        folder = recipe.output / "references" / JOINT_REFERENCE
        joint = replace(recipe.stage_config(recipe.stages[0]), prompt=recipe.joint_prompt())
        reference_answers(folder, model, tokenizer, joint, sha, progress)
        folders[JOINT_REFERENCE] = folder
    return folders


def _pursued_against_prompt(recipe: Recipe, base_teacher: BaseTeacher, model, tokenizer,
                            references: dict[str, Path]) -> dict[str, dict]:
    """Each pursued stage judged on its own evaluator: the composed model (`model`, no prompt) minus the base
    prompted with the stage's prompt, paired on the held-out questions. Pursuit means to go beyond the prompted
    base, so this, not the quality against it, is what a pursued stage is judged by. Only evaluators that
    score question by question (adherence) can be paired; other stages are left out (the pipeline doc)."""
    evaluators = {s.name: resolve_evaluator(s.pursuit.evaluator, recipe.stage_config(s), references[s.name])
                  for s in recipe.stages if s.pursuit is not None}
    evaluators = {name: e for name, e in evaluators.items() if hasattr(e, "scores")}
    if not evaluators:
        return {}
    prompted_base = base_teacher.model()
    out = {}
    for stage in (s for s in recipe.stages if s.name in evaluators):
        evaluator = evaluators[stage.name]
        comparison = compare_paired(evaluator.scores(prompted_base, tokenizer, stage.prompt),
                                    evaluator.scores(model, tokenizer))
        out[stage.name] = {"evaluator": evaluator_name(evaluator), "prompted_base": comparison.base_mean,
                           "adapter": comparison.other_mean, "difference": comparison.difference,
                           "ci": [comparison.difference_ci.low, comparison.difference_ci.high],
                           "p_value": comparison.p_value, "questions": comparison.n}
    return out


def _validate(recipe: Recipe, base: str, adapter: Path, references: dict[str, Path], progress: bool) -> None:
    """The real lm_eval CLI: MC-KL for every stage's prompt, drift and forgetting as the recipe asks."""
    v, lm_eval_dir = recipe.validation, recipe.output / "lm_eval"
    common = dict(base=base, device=v.device, batch_size=v.batch_size, log_samples=True)
    weights = adapter / ADAPTER_WEIGHTS
    # The adapter against each reference: every stage prompt's, and all of them joined (the composition's
    # target). The base and the prompted base would score quality 0 and 1 by definition (baking_mckl's tests).
    for name, reference in references.items():
        heldout = reference / "data" / "heldout.jsonl"
        run_lm_eval(LmEvalRun(tasks=[MCKL_TASK], adapter=str(adapter), dtype=MCKL_DTYPE,
                              metadata={"bake": str(reference)}, **common),
                    lm_eval_dir / "mckl" / name / "adapter", [weights, heldout], f"MC-KL of the adapter ({name})")
    if v.drift:
        d = v.drift
        reference = references[d.stage]
        prepare_drift_data(reference, [d.persona], d.conversations, d.probes_at, progress=progress)
        metadata = {"bake": str(reference), "sampled_answers": d.sampled_answers}
        prompt = next(s.prompt for s in recipe.stages if s.name == d.stage)
        docs = [reference / "data" / "drift_docs.jsonl"]
        run_lm_eval(LmEvalRun(tasks=[DRIFT_TASK], adapter=str(adapter), dtype=BEHAVIOUR_DTYPE, metadata=metadata,
                              **common), lm_eval_dir / "drift" / "adapter", [weights, *docs], "drift of the adapter")
        run_lm_eval(LmEvalRun(tasks=[DRIFT_TASK], system_instruction=prompt, dtype=BEHAVIOUR_DTYPE,
                              metadata=metadata, **common), lm_eval_dir / "drift" / "prompted-base", docs,
                    "drift of the prompted base", reuse_base=v.reuse_base)
    if v.forgetting:
        ensure_forgetting_data()
        metadata = {"max_docs": v.forgetting.max_docs}
        for name, peft, inputs in (("base", None, []), ("adapter", str(adapter), [weights])):
            run_lm_eval(LmEvalRun(tasks=v.forgetting.tasks, adapter=peft, dtype=BEHAVIOUR_DTYPE, metadata=metadata,
                                  apply_chat_template=False, **common),
                        lm_eval_dir / "forgetting" / name, inputs, f"forgetting of the {name}",
                        reuse_base=v.reuse_base)


def all_checks(recipe: Recipe, adapter: Path, pursued: dict[str, dict] | None = None) -> list[Check]:
    """Every check the recipe asks for, on the exported adapter, each three-way on its 95% CI.

    MC-KL quality and KL are judged against the composition's target (the original base with every stage's
    prompt joined; the stage's own prompt for a one-stage recipe), a pursued stage on its evaluator against
    the prompted base (`pursued`), drift and forgetting as their tasks give them.
    """
    v, lm_eval_dir, checks = recipe.validation, recipe.output / "lm_eval", []
    target = JOINT_REFERENCE if len(recipe.stages) > 1 else recipe.stages[0].name
    label = "all prompts joined" if len(recipe.stages) > 1 else f"{recipe.stages[0].name} prompt"
    row = _adapter_row(collect([lm_eval_dir / "mckl" / target]), adapter)
    if v.mckl.min_quality is not None:
        checks.append(judge_value("quality", label, row.get("quality") if row else None, "min", v.mckl.min_quality))
    if v.mckl.max_kl is not None:
        checks.append(judge_value("kl", label, row.get("kl") if row else None, "max", v.mckl.max_kl))
    if v.pursued.min_difference is not None:
        for name, p in (pursued or {}).items():
            m = Measurement(p["difference"], ci=tuple(p["ci"]), higher_is_better=True, source=p["evaluator"])
            checks.append(judge_value("pursued", f"{name} ({p['evaluator']}) − prompted base", m, "min",
                                      v.pursued.min_difference, p["questions"],
                                      note=f"adapter {p['adapter']:.3f}, prompted base {p['prompted_base']:.3f}"))
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
        collection = collect([lm_eval_dir / "forgetting"], max_forgetting_drop_pct=v.forgetting.max_forgetting_drop_pct)
        row = _adapter_row(collection, adapter)
        threshold = Threshold("forgetting", "max", v.forgetting.max_forgetting_drop_pct,
                              "validation.forgetting.max_forgetting_drop_pct")
        checks.append(judge_forgetting_row(row, threshold, collection, v.forgetting.tasks))
    return checks


def _adapter_row(collection, adapter: Path):
    return next((r for r in collection.rows if r.variant.adapter and Path(r.variant.adapter) == adapter), None)


def format_pipeline(result: PipelineResult) -> str:
    """What the command prints: each stage's pursuit, each prompt's quality kept, every check, the verdict."""
    lines = []
    for s in result.stages:
        lines += [f"stage {s.index}: {s.name} (cycle {s.cycle}), best round {s.best_round}, stopped: {s.stop_reason}",
                  "| round | score | vs previous round (paired, 95% CI) | with prompt again | held-out KL to teacher |",
                  "| ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {'start' if r['round'] == 0 else r['round']} | {r['score']:.4f} | "
                  f"{round_change(RoundScore(**r))} | {_fmt(r['reprompted_score'], '.4f')} "
                  f"| {_fmt(r['heldout_kl'], '.4f')} |" for r in s.rounds]
        lines.append("")
    names = sorted(result.stages[-1].quality_after)
    lines += ["quality of each prompt after each stage (1 - KL/KL_unprompted against the original base with that "
              "prompt; joint: with every prompt joined; teacher: who read round 1's prompt):",
              "| after stage | teacher | " + " | ".join(names) + " | joint |",
              "| --- | --- |" + " ---: |" * (len(names) + 1)]
    lines += [f"| {s.index}: {s.name} | {s.target} | " + " | ".join(f"{s.quality_after[n]:.3f}" for n in names)
              + f" | {_fmt(s.joint_quality, '.3f')} |" for s in result.stages]
    if result.behaviour:
        lines += ["", *format_behaviour_table(result.behaviour)]
    lines += ["", format_checks(result.checks) if result.checks else "no checks in the recipe's validation",
              "", f"adapter: {result.adapter}", f"report:  {result.report}", "", "| step | seconds |", "| --- | ---: |",
              *(f"| {step} | {seconds:.0f} |" for step, seconds in result.seconds.items()),
              f"\nwall time: {sum(result.seconds.values()) / 60:.1f} min"]
    return "\n".join(lines)


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _write_record(output: Path, recipe: Recipe, status: str, result: PipelineResult | None = None) -> None:
    PipelineRecord(
        status=status,
        recipe=str(recipe.source) if recipe.source else None,
        stages=[asdict(s) for s in result.stages] if result else [],
        compose=asdict(recipe.compose),
        quality_kept=result.quality_kept() if result else None,
        behaviour=result.behaviour if result else {},
        pursued=result.pursued if result else {},
        checks=[asdict(c) for c in result.checks] if result else [],
        verdict=result.verdict if result else None,
        seconds=result.seconds if result else {},
        adapter="adapter" if result else None,
    ).save_pretrained(output)


class _Timer:
    def __init__(self, name: str, seconds: dict, bar):
        self.name, self.seconds, self.bar = name, seconds, bar

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.seconds[self.name] = time.perf_counter() - self.start
        if exc[0] is None:
            self.bar.update()
