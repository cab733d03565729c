"""Prompt sequences: several prompts baked one after another into one model, optionally in cycles.

Stage j bakes its prompt into the base with stages 1..j-1 merged (in merge mode, only the
earlier stages of the same prompt), towards the target its compose mode names.

    OUTPUT/references/prompt-k/   held-out answers of the ORIGINAL base prompted with prompt k
    OUTPUT/stage-1/ ... stage-N/  one bake per stage, each into the model with the earlier stages merged
    OUTPUT/combined/              all stages as one adapter on the base (export_chain)
    OUTPUT/sequence.json          each prompt's quality after every stage
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from ..artifacts.bake_dir import BakeDir, BakeRecord
from ..artifacts.lora import export_chain, load_chain
from ..artifacts.manifest import owned_directory
from ..artifacts.outputs import check_apart, check_output
from ..artifacts.records import SequenceRecord
from ..constants import COMBINED_DIR, JOINT_REFERENCE, REFERENCES_DIR, SEQUENCE_RECORD
from ..core import models
from ..core.batching import autocast
from ..core.sampling import Trajectory, sample_trajectories
from ..core.scoring import score_heldout
from ..errors import BakingError
from ..training.bake import bake
from ..training.config import BakeConfig, ResumeSettings
from ..training.plan import check_before_work
from ..utils.hashing import sha256_text
from ..utils.text import quoted
from .behaviour import CompositionTracker, format_behaviour_table
from .config import ComposeSettings
from .evaluators import QualityEvaluator, heldout_questions
from .targets import BakedStage, BaseTeacher, stage_target


@dataclass
class StageRecord:
    stage: int
    prompt_index: int
    """1-based index into the prompt list."""
    bake: str
    heldout_kl: float
    kl_ratio: float
    quality_after: list[float]
    """Every prompt's quality (1 − KL/KL_unprompted vs the ORIGINAL base with that prompt) after this stage."""
    joint_quality: float | None = None
    """The same quality against the original base prompted with every prompt joined (the composition's target)."""
    target: str = "start"
    """Who played this stage's teacher: 'start' (the chain so far) or 'base' (the original base)."""
    behaviour_after: dict[str, float] = field(default_factory=dict)
    """Each "K:PERSONA" check's score (mean over held-out questions, no prompt) after this stage."""


@dataclass
class SequenceResult:
    output: Path
    prompts: list[str]
    stages: list[StageRecord]
    combined: Path
    compose: ComposeSettings = field(default_factory=ComposeSettings)
    joint_prompt: str = ""
    joint_quality: dict | None = None
    """The composed model's quality against the joint target, with its 95% CI."""
    behaviour: CompositionTracker | None = None
    """Every prompt's persona checks, question by question, on every model it is judged by."""

    def quality_after_own_stage(self) -> list[float]:
        """Each prompt's quality right after the last stage that baked it."""
        last = {s.prompt_index: s for s in self.stages}
        return [last[k].quality_after[k - 1] for k in range(1, len(self.prompts) + 1)]

    def quality_after_sequence(self) -> list[float]:
        return list(self.stages[-1].quality_after)


def _reference_heldout(model, tokenizer, config: BakeConfig, progress: bool) -> list[Trajectory]:
    """Held-out answers of `model` prompted with config.prompt, scored like a bake's data/heldout.jsonl."""
    questions = heldout_questions(config)
    samples = config.heldout_samples_per_question or config.budget(1, len(questions))["heldout_samples_per_question"]
    with autocast(model.device, config.autocast_dtype):
        heldout = sample_trajectories(
            model, tokenizer, questions, system_prompt=config.prompt,
            samples_per_question=samples, max_new_tokens=config.max_new_tokens,
            temperature=1.0, batch_size=config.generation_batch_size, seed=config.seed + 1,  # bake()'s held-out seed
            desc="sampling reference answers", progress=progress,
        )
    score_heldout(model, tokenizer, heldout, config.prompt, batch_size=config.batch_size * 2, progress=progress)
    return heldout


def reference_answers(directory: Path, model, tokenizer, config: BakeConfig, base_sha: str,
               progress: bool) -> QualityEvaluator:
    """The original base's held-out answers for one prompt, in a folder lm_eval's `--metadata bake=` can read
    (reused when it already holds them): what each prompt's quality is measured against."""
    record = BakeDir(directory).record_or_none()
    if record is not None and record.config == config.to_dict() and record.base_model.get("sha256") == base_sha:
        return QualityEvaluator.from_bake(directory, batch_size=config.batch_size * 2)
    heldout = _reference_heldout(model, tokenizer, config, progress)
    with owned_directory(directory, "reference") as staging:
        BakeDir(staging).write_heldout(t.to_dict() for t in heldout)
        BakeRecord(
            kind="reference", config=config.to_dict(), prompt_sha256=sha256_text(config.prompt),
            base_model={"name_or_path": models.resolve_model(config.model), "sha256": base_sha},
            data={"heldout": "data/heldout.jsonl"},
            note="held-out answers of the original base with this prompt; use with --metadata '{\"bake\": DIR}'",
        ).save_pretrained(staging)
    return QualityEvaluator.from_bake(directory, batch_size=config.batch_size * 2)


def bake_sequence(prompts: list[str], base_config: BakeConfig, output: str | Path, cycles: int = 1, *,
                  compose: ComposeSettings | None = None, overwrite: bool = False, resume: bool = False,
                  progress: bool = True, resume_settings: ResumeSettings | None = None) -> SequenceResult:
    """Bake several prompts one after another into one model, optionally cycling through them.

    Stage j is baked into the base with stages 1..j-1 merged, towards the target
    `compose` names (compose/targets.py; default: every prompt so far, joined, read
    by the original base). Every stage uses `base_config`'s settings (its prompt is
    ignored) and seed, so every stage holds out the same questions and none is ever
    trained on. "How well is prompt k kept" is measured against answers of the
    ORIGINAL base: with prompt k alone (references/prompt-k/, quality
    1 − KL/KL_unprompted) and with every prompt joined (references/joint/); a
    prompt with a built-in persona check is also scored question by question
    (compose/behaviour.py) on the base, the prompted bases and after every stage.
    """
    if not prompts:
        raise BakingError("the prompt list is empty; pass at least one --prompt to bake")
    if not isinstance(cycles, int) or isinstance(cycles, bool) or cycles < 1:
        raise BakingError(f"--cycles must be an integer ≥ 1 (got {quoted(cycles)})")
    compose = compose or ComposeSettings()
    compose.validate()
    prompt_configs = []
    for k, prompt in enumerate(prompts, 1):
        try:
            prompt_configs.append(replace(base_config, prompt=prompt))
        except BakingError as e:
            raise BakingError(f"prompt {k}: {e}") from None
    output = Path(output)
    settings = {"prompts": list(prompts), "cycles": cycles, "bake": {**base_config.to_dict(), "prompt": None},
                "compose": asdict(compose)}
    check_apart(output, [base_config.questions, base_config.model])
    check_output(output, overwrite=overwrite, what="sequence", same_run=lambda folder: _same_sequence(folder, settings))
    check_before_work(prompt_configs, output)
    base_model = models.resolve_model(base_config.model)
    base_sha = models.model_fingerprint(base_model)
    if not (output / SEQUENCE_RECORD).is_file() or overwrite:
        _write_sequence_record(output, settings, base_model, len(prompts), status="running")  # marks the folder

    model, tokenizer = models.load_model(base_model, device=base_config.device)
    references = [reference_answers(output / REFERENCES_DIR / f"prompt-{k}", model, tokenizer, c, base_sha, progress)
                  for k, c in enumerate(prompt_configs, 1)]
    joint_prompt = compose.joined(list(prompts))
    joint = references[0] if joint_prompt == prompts[0] else reference_answers(
        output / REFERENCES_DIR / JOINT_REFERENCE, model, tokenizer, replace(base_config, prompt=joint_prompt),
        base_sha, progress)
    tracker = CompositionTracker({str(k): p for k, p in enumerate(prompts, 1)}, base_config, joint_prompt, model,
                                 tokenizer)
    schedule = [(k, prompt_configs[k - 1]) for _ in range(cycles) for k in range(1, len(prompts) + 1)]
    stages: list[StageRecord] = []
    stage_dirs: list[Path] = []
    earlier: list[BakedStage] = []
    base_teacher = BaseTeacher(base_model, base_config.device)
    for stage, (prompt_index, stage_config) in enumerate(tqdm(schedule, desc="sequence", unit="stage",
                                                              disable=not progress), 1):
        stage_dir = output / f"stage-{stage}"
        target = stage_target(compose, stage_config, earlier, stage_dirs)
        # The student starts from the chain so far (the model already loaded), except in merge mode.
        start = model if target.start == stage_dirs else load_chain(base_model, target.start,
                                                                       device=base_config.device)[0]
        result = bake(target.config, stage_dir, overwrite=overwrite, resume=resume, progress=progress,
                      teacher=(start, tokenizer), teacher_id=target.teacher_id, resume_settings=resume_settings,
                      target_model=base_teacher.get(target), replay=target.replay)
        stage_dirs.append(stage_dir)
        earlier.append(BakedStage(stage_config.prompt, [stage_dir]))
        model, _ = load_chain(base_model, stage_dirs, device=base_config.device)
        behaviour_after = tracker.after_stage(model, tokenizer, str(prompt_index))
        stages.append(StageRecord(
            stage=stage, prompt_index=prompt_index, bake=stage_dir.name, heldout_kl=result.final_kl.per_token,
            kl_ratio=result.kl_ratio, quality_after=[reference(model, tokenizer, stage) for reference in references],
            joint_quality=joint(model, tokenizer, stage), target=target.target,
            behaviour_after=behaviour_after,
        ))
    joint_quality, joint_ci = joint.quality_with_ci(model, tokenizer)
    combined = export_chain(base_model, stage_dirs, output / COMBINED_DIR, overwrite=True)
    sequence = SequenceResult(output=output, prompts=list(prompts), stages=stages, combined=combined,
                              compose=compose, joint_prompt=joint_prompt,
                              joint_quality={"quality": joint_quality, "ci": [joint_ci.low, joint_ci.high]},
                              behaviour=tracker)
    _write_sequence_record(output, settings, base_model, len(prompts), status="done", sequence=sequence)
    return sequence


def _same_sequence(folder: Path, settings: dict) -> bool:
    record = SequenceRecord.from_pretrained_or_none(folder)
    return record is not None and record.config == settings


def _write_sequence_record(output: Path, settings: dict, base_model: str, n_prompts: int, *, status: str,
                           sequence: SequenceResult | None = None) -> None:
    SequenceRecord(
        status=status,
        config=settings,
        base_model=base_model,
        quality="1 - MC-KL(original base + prompt k || model) / MC-KL(original base + prompt k || base), "
                "on references/prompt-k",
        references=[f"{REFERENCES_DIR}/prompt-{k}" for k in range(1, n_prompts + 1)],
        stages=[asdict(s) for s in sequence.stages] if sequence else [],
        quality_after_own_stage=sequence.quality_after_own_stage() if sequence else None,
        quality_after_sequence=sequence.quality_after_sequence() if sequence else None,
        combined=COMBINED_DIR if sequence else None,
        joint_prompt=sequence.joint_prompt if sequence else None,
        joint_quality=sequence.joint_quality if sequence else None,
        behaviour=sequence.behaviour.summaries() if sequence and sequence.behaviour else {},
        behaviour_scores=sequence.behaviour.scores() if sequence and sequence.behaviour else {},
    ).save_pretrained(output)


def format_sequence_table(result: SequenceResult) -> str:
    header = " | ".join(f"prompt {k}" for k in range(1, len(result.prompts) + 1))
    lines = [*(f"prompt {k}: {p}" for k, p in enumerate(result.prompts, 1)), "",
             f"compose: {result.compose.mode}" + (f" (teacher: {result.compose.joint_teacher})"
                                                  if result.compose.mode == "joint" else ""),
             "quality = 1 − KL/KL_unprompted against the original base with each prompt (1 = as prompted); "
             "joint: against the original base with every prompt joined", "",
             f"| after stage | baked | teacher | {header} | joint |",
             "| ---: | ---: | --- |" + " ---: |" * (len(result.prompts) + 1)]
    for s in result.stages:
        cells = " | ".join(f"{q:.3f}" for q in s.quality_after)
        lines.append(f"| {s.stage} | prompt {s.prompt_index} | {s.target} | {cells} | {_fmt(s.joint_quality, '.3f')} |")
    own = " | ".join(f"{q:.3f}" for q in result.quality_after_own_stage())
    lines.append(f"| own stage | | | {own} | |")
    if result.joint_quality:
        q = result.joint_quality
        lines.append(f"\ncomposed model vs the joint target: quality {q['quality']:.3f} "
                     f"[{q['ci'][0]:.3f}, {q['ci'][1]:.3f}]")
    if result.behaviour:
        lines += ["", *format_behaviour_table(result.behaviour.summaries())]
    lines.append(f"\ncombined adapter: {result.combined}")
    return "\n".join(lines)


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)
