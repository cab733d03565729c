"""bake(): one prompt into one adapter folder, resumable, atomic, and recorded.

    plan (sizes, LoRA targets; no weights) -> sample answers of the prompted model ->
    score the held-out ones -> train the LoRA (PromptBaker) -> held-out KL after every
    epoch (and every --eval-every steps) -> write the bake folder with the best adapter

Work in progress lives in `.NAME.partial` beside the output (workdir.py) and
survives a kill; only a finished bake is renamed into place.
"""

from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Iterator

from tqdm.auto import tqdm

from ..artifacts.bake_dir import BakeDir, BakeRecord
from ..artifacts.manifest import owned_directory
from ..artifacts.outputs import check_apart, check_output, check_writable
from ..constants import CHECKPOINTS_DIR, DATA_DIR
from ..core import models, parallel
from ..core.batching import autocast
from ..core.harness import LmEvalRun
from ..core.kl import KLEstimate
from ..core.prompts import BakePrompt
from ..core.sampling import sample_trajectories
from ..core.scoring import score_heldout
from ..errors import BakingError
from ..utils.atomic import remove_stale_staging

from .baker import LossDiverged, PromptBaker, attach_lora
from .config import BakeConfig, ResumeSettings
from .loop import TrainingLoop
from .multi_turn import conversation_training_set, depth_record, heldout_turns
from .plan import BakePlan, plan_bake
from .replay import Replay
from .record import BestCheckpoint, Stopwatch, bake_record, environment, questions_sha256
from .workdir import (
    OutputWriteError, WorkDir, kept_note, load_trainable_state, safetensors_error, set_rng_state, trainable_state,
    write_error,
)

@dataclass
class BakeResult:
    output: Path
    base_model: str
    reference_kl: KLEstimate
    """Held-out KL(prompted base ‖ unprompted base): what baking has to remove."""
    final_kl: KLEstimate
    """Held-out KL(prompted base ‖ baked model), for the adapter written (the best measured, see `kept`)."""
    epoch_kl: list[KLEstimate]
    reused: bool = False
    resumed_from: dict | None = None
    """{"epoch": E, "step": S} when this run continued an interrupted bake after step S of epoch E."""

    @property
    def kl_ratio(self) -> float:
        return self.final_kl.per_token / self.reference_kl.per_token

    status: str = "ok"
    """ok | warning | failed (see `judge_kl_ratio`)."""
    warnings: tuple[str, ...] = ()
    prompt_form: str = "chat"
    """chat | text: lm_eval scores this bake with --apply_chat_template only in the chat form."""
    kept: dict | None = None
    """Which measurement's adapter was written: {"epoch", "step", "heldout_kl", "rule"}."""
    training: dict | None = None
    """baking.json's "training": what was asked, the sizes it came to, the LoRA targets it resolved to."""

    def lm_eval_command(self) -> str:
        return LmEvalRun(base=self.base_model, adapter=str(self.output), tasks=["baking_mckl"],
                         apply_chat_template=self.prompt_form != "text").shell()


def bake(config: BakeConfig | None = None, output: str | Path = "adapters/baked", *, overwrite: bool = False,
         resume: bool = False, progress: bool = True, teacher=None, teacher_id: str | None = None,
         trust_remote_code: bool = False, resume_settings: ResumeSettings | None = None,
         task: dict | None = None, target_model=None, replay: Replay | None = None, **settings) -> BakeResult:
    """Bake `config.prompt` into a LoRA adapter written to `output` (atomically).

    `bake(prompt="You are a pirate.", output="adapters/pirate")` works too:
    keyword settings build the BakeConfig.

    Work in progress lives in `.NAME.partial` beside `output` (see workdir.py)
    and survives a kill. `resume=True` continues it (and simply starts when
    there is none); without it, a leftover folder is an error that says to pass
    --resume or --overwrite (which discards it).

    `teacher` is an optional (model, tokenizer) pair to bake into instead of
    loading `config.model`: prompt pursuit passes the base with earlier rounds
    merged in. It must be a plain (non-PEFT) model; it is modified in place.
    The adapter still names `config.model` as its base. `teacher_id` names the
    teacher's weights, so a resume cannot mix two teachers' work.

    `target_model` (a plain model) plays the prompted teacher instead of `teacher`'s weights, which the
    student starts from; `replay` mixes earlier prompts' answers in (see `Replay`). Name both in `teacher_id`.

    `task` is recorded as baking.json's `task` when the prompt is an lm_eval task's few-shot context
    (workflows/task_bake.py builds it).

    Under `accelerate launch` (several processes) the bake runs data parallel through
    accelerate's engine (see `core/parallel.py`); only the main process writes `output`
    and the work folder.
    """
    config = config or BakeConfig(**settings)
    config.validate()
    resume_settings = resume_settings or ResumeSettings()
    resume_settings.validate()
    output = Path(output)
    check_apart(output, [config.questions, config.model])  # before any work: an output never replaces an input
    check_writable(output)  # a read-only --output fails now, not after the whole bake
    workers = parallel.current(config.device)
    watch = Stopwatch()
    with watch.phase("load"):
        # Sizes and LoRA targets made concrete from the questions and the model's config, before any weights
        # load: `plan.config` is what runs, what baking.json records and what a rerun is compared with.
        plan = plan_bake(config, trust_remote_code=trust_remote_code, device=workers.device)
    config = plan.config
    work = WorkDir(output, writer=workers.is_main)
    existing = _existing_bake(output, config, overwrite, teacher_id)
    if existing is not None:
        if workers.is_main:
            _forget_finished_work(work, config)
        return existing
    if work.exists() and not resume and not overwrite:
        work.lock()  # a bake still running there is "busy", not "interrupted"
        work.release()
        raise BakingError(f"an interrupted bake of {output} is in {work.path}; pass --resume to continue it, "
                          "or --overwrite to start over")

    with watch.phase("load"):
        model, tokenizer = teacher or models.load_model(
            plan.model_path, device=workers.device or config.device, trust_remote_code=trust_remote_code,
            dtype=config.dtype, load_in_4bit=config.load_in_4bit)
        # What a resumed run must match. The base's hash is cached (models.model_fingerprint), so only
        # the first bake on a base pays for reading its weights.
        identity = {"config": config.to_dict(), "questions_sha256": questions_sha256(config),
                    "base_model_sha256": models.model_fingerprint(plan.model_path), "teacher": teacher_id}

    adopted = work.exists() and resume
    if adopted and workers.sharded:
        raise BakingError(f"resuming a bake sharded by {workers.engine} is not supported (its optimiser state is "
                          "split over the processes); rerun with --overwrite, or resume without the sharding config")
    if workers.is_main:
        _settle_work_folder(work, output, identity, discard=work.exists() and not resume, adopted=adopted)
    workers.barrier()  # the other processes read the folder the main process has just settled
    with _released_on_failure(work, output, adopted):
        result = _bake_into(work, plan, output, model, tokenizer, watch, workers,
                            progress=progress and workers.is_main, settings=resume_settings, adopted=adopted,
                            task=task, target_model=target_model, replay=replay)
    workers.barrier()  # every process returns once the output is in place
    return result


def _settle_work_folder(work: WorkDir, output: Path, identity: dict, *, discard: bool, adopted: bool) -> None:
    """The main process makes `work` this run's: discarded first (--overwrite), adopted (--resume) or created."""
    try:
        if discard:
            work.discard()  # --overwrite without --resume: start over
        if adopted:
            work.adopt(identity)
        else:
            work.create(identity)
    except OSError as e:
        work.release()
        raise write_error(e, work) from None
    remove_stale_staging(output)  # now, not only at saving: a killed run's copy may hold much disk


@contextmanager
def _released_on_failure(work: WorkDir, output: Path, adopted: bool) -> Iterator[None]:
    """Release the work folder's lock on any failure, and say in the error what became of the work so far."""
    try:
        yield
    except OutputWriteError:
        work.release()
        raise
    except BakingError as e:
        work.release()  # the work folder stays as it is (a failed resume's byte for byte): see kept_note
        if isinstance(e, LossDiverged) and not adopted:
            work.discard()  # made by this run moments ago, for settings that can never finish
            raise
        raise BakingError(f"{e}; {kept_note(work, str(e))}") from None
    except (OSError, safetensors_error()) as e:
        work.release()
        raise write_error(e, work) from None
    except KeyboardInterrupt:
        work.release()
        if work.writer and work.exists() and not adopted and not (work.path / "data" / "train.jsonl").is_file():
            work.discard()  # this run's own folder, nothing worth keeping yet
            raise KeyboardInterrupt(f"nothing was written at {output}") from None
        raise KeyboardInterrupt(f"nothing was written at {output}; the work so far is kept in {work.path}: "
                                "rerun the same command with --resume to continue") from None
    except BaseException:
        work.release()
        raise


def _bake_into(work: WorkDir, plan: BakePlan, output: Path, model, tokenizer, watch: Stopwatch, workers, *,
               progress: bool, settings: ResumeSettings, adopted: bool, task: dict | None = None,
               target_model=None, replay: Replay | None = None) -> BakeResult:
    """The bake proper, reading back from `work` whatever an earlier run finished and saving as it goes."""
    config = plan.config
    sampler = model if target_model is None else target_model  # the prompted model whose answers are baked
    state = work.state()
    checkpoint = work.trainer()
    watch.add((checkpoint or state).get("seconds", {}))
    prompt = BakePrompt.from_setting(config.prompt, config.prompt_format, tokenizer)

    # 1. Answers of the prompted model: sampled once, kept in the work folder.
    multi_turn = config.multi_turn.enabled
    train = work.trajectories("train")
    if train is None:
        single = partial(_sample_train, sampler, tokenizer, plan, prompt, model.device, watch, workers, progress)
        if multi_turn:
            train = conversation_training_set(sampler, tokenizer, plan.config, plan.budget, single, watch, progress)
            train = train if replay is None else replay.mix(train, config.seed)
        else:
            train = single(replay)
        work.save_trajectories("train", train)
        work.update_state(seconds=watch.seconds)
    heldout = work.trajectories("heldout")  # single-turn in every bake: what baking_mckl scores
    if heldout is None:
        heldout = _sample_and_score_heldout(sampler, tokenizer, plan, prompt, model.device, watch, workers,
                                            progress)
        work.save_trajectories("heldout", heldout)
        work.update_state(seconds=watch.seconds)
    # The held-out set whose KL picks the adapter and judges the bake: a multi-turn bake's held-out conversations.
    measured = heldout_turns(work, sampler, tokenizer, config, watch, progress) if multi_turn else heldout

    # 2. The student, and the held-out KL of the unprompted base: what baking has to remove.
    model = attach_lora(model, config)  # seeded: the same fresh adapter in every run, before any restore
    baker = PromptBaker(model, tokenizer, config, progress=progress, workers=workers, teacher_model=target_model)
    if state.get("reference_kl"):
        reference_kl = KLEstimate(**state["reference_kl"])
    else:
        with watch.phase("evaluation"):
            reference_kl = baker.heldout_kl(measured, student_is_base=True)
        work.update_state(reference_kl=asdict(reference_kl), seconds=watch.seconds)

    # 3. Where training starts: a trainer checkpoint of an interrupted run, or the beginning.
    loop = TrainingLoop(work=work, model=model, baker=baker, heldout=measured, watch=watch, workers=workers,
                        config=config, settings=settings, progress=progress,
                        tracker=BestCheckpoint(config.keep_best))
    first_epoch, first_step, first_losses = 1, 0, []
    if checkpoint is not None:
        load_trainable_state(model, checkpoint["lora"])
        baker.optimizer.load_state_dict(checkpoint["optimizer"])
        set_rng_state(checkpoint["rng"])
        loop.epochs = list(checkpoint["epochs"])
        loop.tracker = BestCheckpoint.from_state(config.keep_best, checkpoint.get("tracker"))
        first_epoch, first_step, first_losses = checkpoint["epoch"], checkpoint["step"], checkpoint["losses"]
    resumed_from = {"epoch": first_epoch, "step": first_step} if adopted else None
    if adopted:
        work.note_resume(resumed_from)
        if progress:
            tqdm.write(f"resuming the bake in {work.path} at epoch {first_epoch}, step {first_step}")

    # 4. Train: held-out KL after every epoch (and every --eval-every steps), the trainer saved as it goes.
    steps_per_epoch = plan.budget["steps_per_epoch"]
    loop.last_save = time.monotonic()
    with loop.stop.installed():
        for epoch in range(first_epoch, config.epochs + 1):
            resumed = epoch == first_epoch
            with watch.phase("training"):
                loss = baker.train_epoch(train, epoch, start=first_step if resumed else 0,
                                         losses=first_losses if resumed else None,
                                         after_step=partial(loop.after_step, epoch, steps_per_epoch))
            kl = loop.measure(epoch, steps_per_epoch)
            loop.epochs.append({"epoch": epoch, "train_loss": loss, "heldout_kl": asdict(kl)})
            work.save_epoch_adapter(model, epoch, trainable_state(model) if workers.sharded else None)
            loop.save_trainer(epoch + 1, 0, [])
            loop.last_save = time.monotonic()
            if progress:
                tqdm.write(f"epoch {epoch}: train KL {loss:.4f}, held-out KL/token {kl.per_token:.4f} "
                           f"(unprompted base {reference_kl.per_token:.4f})")
            loop.stop_if_asked()

    # 5. The adapter kept, its record, and the bake folder.
    loop.tracker.restore(model)  # the lowest held-out KL's adapter (with keep_best), else the last one
    by_depth = None
    if multi_turn:
        with watch.phase("evaluation"):
            by_depth = depth_record(baker, measured, heldout)
    generated = train + heldout + (measured if multi_turn else [])
    answer_tokens = {"generated": sum(len(t.answer_ids) for t in generated),
                     "trained": sum(len(t.answer_ids) for t in train) * config.epochs}
    record = bake_record(config, plan.model_path, teacher=work.state()["identity"].get("teacher"),
                         questions_count=(len(plan.train_questions), len(plan.heldout_questions)),
                         reference_kl=reference_kl, epochs=loop.epochs, performance=watch.report(answer_tokens),
                         environment={**environment(model.device), "engine": workers.engine,
                                      "processes": workers.world},
                         resumes=work.resumes(), tracker=loop.tracker, plan=plan,
                         prompt_form=prompt.form, task=task, multi_turn=by_depth)
    gathered = {"state_dict": trainable_state(model)} if workers.sharded else {}  # a collective: every process
    if work.writer:
        with watch.phase("saving"):
            _write_bake_folder(work, output, model, record, gathered)
        work.discard()  # the output is in place; a kill before this line leaves a folder the next run removes
    return _result(output, record, resumed_from=resumed_from)


def _sample_train(sampler, tokenizer, plan: BakePlan, prompt: BakePrompt, device, watch: Stopwatch, workers,
                  progress: bool, replay: Replay | None) -> list:
    """The training answers: sampled at the configured temperature, then earlier prompts' answers mixed in."""
    config = plan.config
    with watch.phase("sampling"), autocast(device, config.autocast_dtype):
        train = sample_trajectories(
            sampler, tokenizer, plan.train_questions, system_prompt=prompt,
            samples_per_question=config.samples_per_question, max_new_tokens=config.max_new_tokens,
            temperature=config.temperature, batch_size=config.generation_batch_size, seed=config.seed,
            desc="sampling training answers", progress=progress, workers=workers,
            capture_top_k=config.top_k if config.cache_teacher else None,
        )
    return train if replay is None else replay.mix(train, config.seed)


def _sample_and_score_heldout(sampler, tokenizer, plan: BakePlan, prompt: BakePrompt, device, watch: Stopwatch,
                              workers, progress: bool) -> list:
    """The held-out answers with their prompted and unprompted log-probs."""
    config = plan.config
    # Held-out answers estimate KL, so they must be true samples of the prompted model: T=1.
    with watch.phase("sampling"), autocast(device, config.autocast_dtype):
        heldout = sample_trajectories(
            sampler, tokenizer, plan.heldout_questions, system_prompt=prompt,
            samples_per_question=config.heldout_samples_per_question, max_new_tokens=config.max_new_tokens,
            temperature=1.0, batch_size=config.generation_batch_size, seed=config.seed + 1,
            desc="sampling held-out answers", progress=progress, workers=workers,
        )
    with watch.phase("scoring"):
        score_heldout(sampler, tokenizer, heldout, prompt, batch_size=config.batch_size * 2,
                      progress=progress, workers=workers)
    return heldout


def _write_bake_folder(work: WorkDir, output: Path, model, record: BakeRecord, gathered: dict) -> None:
    """The finished bake, staged and renamed into place: checkpoints and data copied from `work`, adapter, record."""
    with owned_directory(output, "bake") as staging:
        # Copy, not move: a kill before the rename below must leave the work folder whole.
        skip_hidden = shutil.ignore_patterns(".*")  # a half-written epoch checkpoint's staging folder
        shutil.copytree(work.path / CHECKPOINTS_DIR, staging / CHECKPOINTS_DIR, ignore=skip_hidden)
        shutil.copytree(work.path / DATA_DIR, staging / DATA_DIR, ignore=skip_hidden)
        model.save_pretrained(staging, **gathered)
        record.save_pretrained(staging)
        BakeDir(staging).write_model_card(record)


def _result(output: Path, record: BakeRecord, *, reused: bool = False, resumed_from: dict | None = None) -> BakeResult:
    kl = record.kl
    epochs = [KLEstimate(**e["heldout_kl"]) for e in kl["per_epoch"]]
    kept = (kl.get("kept") or {}).get("heldout_kl")  # the written adapter's; bakes before keep_best: the last
    return BakeResult(output=output, base_model=record.base_path, reference_kl=KLEstimate(**kl["unprompted_base"]),
                      final_kl=KLEstimate(**kept) if kept else epochs[-1], epoch_kl=epochs, reused=reused,
                      resumed_from=resumed_from, status=record.status, warnings=tuple(record.warnings),
                      prompt_form=record.prompt_form or "chat", kept=kl.get("kept"),
                      training=record.training)


def _forget_finished_work(work: WorkDir, config: BakeConfig) -> None:
    """Remove the work folder of a run killed after its output was already in place (same settings)."""
    if not work.exists():
        return
    try:
        if work.state().get("identity", {}).get("config") == config.to_dict():
            work.discard()
    except BakingError:
        pass  # busy or not ours to judge: leave it
    work.release()


def _existing_bake(output: Path, config: BakeConfig, overwrite: bool, teacher_id: str | None) -> BakeResult | None:
    """Reuse an identical finished bake (same settings, same teacher); refuse to replace what is not ours, or
    another bake without --overwrite."""

    def same_bake(folder: Path) -> bool:
        record = BakeDir(folder).record_or_none()
        return record is not None and _with_defaults(record.config) == config.to_dict() and record.teacher == teacher_id

    check_output(output, overwrite=overwrite, what="bake", same_run=same_bake)
    if overwrite or not BakeDir(output).is_bake() or not same_bake(output):
        return None
    return _result(output, BakeDir(output).record(), reused=True)


def _with_defaults(recorded) -> dict | None:
    """A recorded config with settings added since it was written set to their defaults (None if unreadable)."""
    try:
        return BakeConfig.from_dict(recorded).to_dict()
    except (BakingError, TypeError):
        return None

