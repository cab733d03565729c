"""Prompt pursuit (arXiv 2409.13697): bake the same prompt again into the baked model.

Round i+1 bakes the prompt u with the base + rounds 1..i merged as teacher
(prompted) and student (unprompted, new LoRA): θ_(i+1) = B(θ_i, u). After each
round an evaluator scores the model; pursuit stops when a round scores worse,
improves by less than `min_improvement`, or at `max_rounds`.

    OUTPUT/round-1/ ... round-N/   one bake each; round-k stacks on rounds 1..k-1
    OUTPUT/pursued/                rounds 1..best as one adapter on the base (export_chain)
    OUTPUT/pursuit.json            per-round scores, stop reason, best round, settings
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..artifacts.lora import chain_id, export_chain, load_chain, merge_adapters
from ..artifacts.outputs import check_apart, check_output
from ..artifacts.records import PursuitRecord
from ..constants import ADAPTER_WEIGHTS, PURSUED_DIR, PURSUIT_RECORD
from ..core import models
from ..core.stats import compare_paired
from ..training.bake import bake
from ..training.config import BakeConfig, ResumeSettings
from ..training.plan import check_before_work
from .behaviour import format_difference
from .config import PursuitSettings
from .evaluators import Evaluator, checked_score, evaluator_name, evaluator_spec, reprompted_score, resolve_evaluator
from .targets import StageTarget


@dataclass
class RoundScore:
    round: int
    """0 is the unbaked base (reference only); 1 is the plain bake."""
    bake: str | None
    score: float
    improvement: float | None = None
    """Relative to the previous round: (score − previous) / |previous| (the plain difference when previous is 0)."""
    reprompted_score: float | None = None
    """The same model with the prompt given again (round 0: the prompted base)."""
    heldout_kl: float | None = None
    """The round's own held-out KL per token to its teacher (the previous round, prompted)."""
    kl_ratio: float | None = None
    """heldout_kl / KL of its teacher without the prompt: how completely this round baked."""
    difference: float | None = None
    """score − the previous round's, paired over the held-out questions (evaluators with per-question scores)."""
    difference_ci: list[float] | None = None
    """Its 95% CI; a difference whose CI holds zero is not shown as a change."""
    question_scores: list[float] | None = None


STOP_REASONS = {
    "worse": "the last round scored worse than the one before",
    "converged": "the last round improved the score by less than --min-improvement",
    "max_rounds": "reached --max-rounds",
}


@dataclass
class PursuitResult:
    output: Path
    base_model: str
    rounds: list[RoundScore]
    """Round 0 (the base) first, then every round baked."""
    stop_reason: str
    best_round: int
    pursued: Path
    """Rounds 1..best_round as one adapter on the base."""
    settings: PursuitSettings = field(default_factory=PursuitSettings)
    round_dirs: list[Path] = field(default_factory=list)
    """The kept rounds' bake folders (1..best_round), in order: what a pipeline chains on."""


def relative_improvement(previous: float, current: float) -> float:
    return (current - previous) / abs(previous) if previous != 0 else current - previous


def stop_decision(round_index: int, improvement: float | None, settings: PursuitSettings) -> str | None:
    """Why pursuit stops after this round (a STOP_REASONS key), or None to go on."""
    if improvement is not None and improvement < 0:
        return "worse"
    if improvement is not None and improvement < settings.min_improvement:
        return "converged"
    if round_index >= settings.max_rounds:
        return "max_rounds"
    return None


def _same_pursuit(config: BakeConfig):
    def same(folder: Path) -> bool:
        record = PursuitRecord.from_pretrained_or_none(folder)
        return record is not None and record.config == config.to_dict()
    return same


def pursue(config: BakeConfig, output: str | Path, *, max_rounds: int = 5, min_improvement: float = 0.01,
           evaluator=None, overwrite: bool = False, resume: bool = False, progress: bool = True,
           resume_settings: ResumeSettings | None = None, chain=(), reference: str | Path | None = None,
           target: StageTarget | None = None, target_model=None) -> PursuitResult:
    """Prompt pursuit: bake `config.prompt` again and again into the baked model.

    Round 1 is `bake(config)` into `output/round-1`; round i+1 bakes the same
    prompt with the base + rounds 1..i merged as teacher (prompted) and student
    (unprompted, new LoRA). After each round the merged model is scored by
    `evaluator` (see `resolve_evaluator`; higher is better). Pursuit stops when
    a round scores worse than the one before, improves by less than
    `min_improvement` (relative), or at `max_rounds`; the best round's chain is
    exported to `output/pursued/`. Rerunning with the same settings reuses the
    rounds already on disk, so a failed evaluator costs no re-baking, and with
    `resume` a round that was interrupted continues from its last checkpoint.

    `chain` (adapter folders on the same base) is what the prompt is pursued on
    top of: every round's teacher and student include it, and round 0 is the
    base with it merged (a pipeline stage after earlier stages). `reference`
    is a folder of held-out answers of the ORIGINAL base with this prompt, which
    "quality" and our lm_eval tasks compare against; by default round 1's, which
    are those answers when there is no chain. `target` (compose/targets.py) is
    what round 1 bakes towards after earlier stages (its settings replace
    `config`; `target_model` is the original base when the target says so);
    later rounds pursue the prompt on the model baked so far.
    """
    if target is not None:
        config = target.config
    config.validate()
    settings = PursuitSettings(max_rounds, min_improvement, evaluator_name(evaluator) if callable(evaluator)
                               else evaluator_spec(evaluator, config.prompt))
    settings.validate()
    output = Path(output)
    check_apart(output, [config.questions, config.model])
    check_output(output, overwrite=overwrite, what="pursuit", same_run=_same_pursuit(config))
    check_before_work([config], output)
    base_model = models.resolve_model(config.model)
    chain = [Path(c) for c in chain]
    # What round 1 starts from: the chain's weights and the answers quality is measured against.
    first_teacher = target.teacher_id if target is not None else chain_id(chain)
    start = {"chain": chain_id(chain), "reference": str(reference) if reference else None}
    if first_teacher != start["chain"]:
        start["target"] = first_teacher  # only when it differs, so earlier pursuits' records still match
    # A finished pursuit is reused only when its evaluator is named by a spec: two Python callables with the
    # same name can score differently, so with one the rounds' bakes are reused but every score is recomputed.
    finished = None if overwrite or callable(evaluator) else _finished(output, config, settings, start)
    if finished is not None:
        return finished
    if not (output / PURSUIT_RECORD).is_file() or overwrite:
        _write_pursuit_record(output, config, settings, base_model, [], None, start=start)  # marks the folder

    rounds: list[RoundScore] = []
    round_dirs: list[Path] = []
    # Round 1 bakes the base, which bake() loads itself, or the base with the chain merged.
    teacher = load_chain(base_model, chain, device=config.device) if chain else None
    score_fn: Evaluator | None = None
    stop_reason = None
    bar = tqdm(range(1, max_rounds + 1), desc="pursuit", unit="round", disable=not progress)
    for round_index in bar:
        round_dir = output / f"round-{round_index}"
        first = round_index == 1
        result = bake(config, round_dir, overwrite=overwrite, resume=resume, progress=progress, teacher=teacher,
                      teacher_id=first_teacher if first else chain_id(chain + round_dirs),
                      resume_settings=resume_settings, target_model=target_model if first else None,
                      replay=target.replay if first and target is not None else None)
        round_dirs.append(round_dir)
        kept = f"; rounds 1-{round_index} are kept in {output}"
        if score_fn is None:
            # Answers of the original prompted base (round 1's without a chain): the fixed
            # reference every round is compared against.
            score_fn = resolve_evaluator(evaluator, config, reference or round_dir)
            model, tokenizer = load_chain(base_model, chain, device=config.device)
            rounds.append(RoundScore(
                round=0, bake=None, score=checked_score(score_fn, model, tokenizer, 0, kept=kept),
                question_scores=getattr(score_fn, "last_scores", None),
                reprompted_score=reprompted_score(score_fn, model, tokenizer, config.prompt, 0, kept=kept)))
            model = merge_adapters(model, [round_dir], base_model=base_model)
        else:
            model, _ = load_chain(base_model, chain + round_dirs, device=config.device)
        score = checked_score(score_fn, model, tokenizer, round_index, kept=kept)
        improvement = None if round_index == 1 else relative_improvement(rounds[-1].score, score)
        questions = getattr(score_fn, "last_scores", None)
        rounds.append(RoundScore(
            round=round_index, bake=round_dir.name, score=score, improvement=improvement,
            question_scores=questions, **_paired_difference(rounds[-1].question_scores, questions),
            reprompted_score=reprompted_score(score_fn, model, tokenizer, config.prompt, round_index, kept=kept),
            heldout_kl=result.final_kl.per_token, kl_ratio=result.kl_ratio,
        ))
        bar.set_postfix(score=f"{score:.4g}")
        stop_reason = stop_decision(round_index, improvement, settings)
        _write_pursuit_record(output, config, settings, base_model, rounds, stop_reason, start=start)
        if stop_reason:
            break
        teacher = (model, tokenizer)  # bake() wraps it in a fresh LoRA in place
    bar.close()

    baked = rounds[1:]
    best = max(baked, key=lambda r: r.score)  # the earliest of equal scores: fewer rounds, same quality
    pursued = export_chain(base_model, round_dirs[:best.round], output / PURSUED_DIR, overwrite=True)
    _write_pursuit_record(output, config, settings, base_model, rounds, stop_reason, best.round, start=start)
    return PursuitResult(output=output, base_model=base_model, rounds=rounds, stop_reason=stop_reason,
                         best_round=best.round, pursued=pursued, settings=settings,
                         round_dirs=round_dirs[:best.round])


def _paired_difference(previous: list[float] | None, current: list[float] | None) -> dict:
    if not previous or not current or len(previous) != len(current):
        return {}
    comparison = compare_paired(previous, current)
    return {"difference": comparison.difference,
            "difference_ci": [comparison.difference_ci.low, comparison.difference_ci.high]}


def _finished(output: Path, config: BakeConfig, settings: PursuitSettings, start: dict) -> PursuitResult | None:
    """The result of a pursuit already finished in `output` with these settings from this start, or None."""
    record = PursuitRecord.from_pretrained_or_none(output)
    if not (record is not None and record.status == "done" and record.config == config.to_dict()
            and record.settings == asdict(settings) and record.start == start
            and (output / PURSUED_DIR / ADAPTER_WEIGHTS).is_file()):
        return None
    try:
        rounds = [RoundScore(**r) for r in record.rounds]
        best = int(record.best_round)
        return PursuitResult(output=output, base_model=str(record.base_model), rounds=rounds,
                             stop_reason=record.stop_reason, best_round=best, pursued=output / PURSUED_DIR,
                             settings=settings, round_dirs=[output / f"round-{k}" for k in range(1, best + 1)])
    except (KeyError, TypeError, ValueError):
        return None  # a damaged record: pursue again (finished rounds are still reused)


def _write_pursuit_record(output: Path, config: BakeConfig, settings: PursuitSettings, base_model: str,
                          rounds: list[RoundScore], stop_reason: str | None, best_round: int | None = None, *,
                          start: dict | None = None) -> None:
    PursuitRecord(
        status="done" if best_round is not None else "running",
        config=config.to_dict(),
        settings=asdict(settings),
        start=start,
        base_model=base_model,
        score=f"{settings.evaluator} (higher is better); round 0 is the unbaked base",
        rounds=[asdict(r) for r in rounds],
        stop_reason=stop_reason,
        stop_reason_text=STOP_REASONS.get(stop_reason),
        best_round=best_round,
        pursued=PURSUED_DIR if best_round is not None else None,
        note="round-k is an adapter on the base with rounds 1..k-1 merged; pursued/ is the usable single adapter",
    ).save_pretrained(output)


def format_pursuit_table(result: PursuitResult) -> str:
    lines = [f"score: {result.settings.evaluator} (higher is better)", "",
             "| round | score | vs previous round (paired, 95% CI) | with prompt again | held-out KL to teacher | KL ratio |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result.rounds:
        label = "base" if r.round == 0 else str(r.round) + (" (best)" if r.round == result.best_round else "")
        lines.append(f"| {label} | {r.score:.4f} | {round_change(r)} | {_fmt(r.reprompted_score, '.4f')} "
                     f"| {_fmt(r.heldout_kl, '.4f')} | {_fmt(r.kl_ratio, '.1%')} |")
    lines.append(f"\nstopped: {STOP_REASONS[result.stop_reason]}; best round {result.best_round} "
                 f"exported to {result.pursued}")
    return "\n".join(lines)


def round_change(r: RoundScore) -> str:
    """A round's change from the one before: the paired difference with its CI ("none" when the CI holds
    zero), else the relative change of the scores."""
    if r.difference_ci is not None:
        return format_difference({"difference": r.difference, "ci": r.difference_ci})
    return _fmt(r.improvement, '+.1%')


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)
