"""Prompt Baking: distil "base model + prompt" into "base model + LoRA, no prompt".

    θ_u = argmin KL( P_θ(· | u, x) ‖ P_θu(· | x) )   over answers y ~ P_θ(· | u, x)

One model sits in memory. The teacher is that model with the adapter switched
off and the prompt u in its context; the student is the same model with the
adapter on and no prompt. Both read the same question x and the same sampled
answer tokens y; only answer positions count in the loss.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import resource
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from . import models, parallel
from .errors import BakingError
from .io import staged_directory, write_json
from .kl import (
    KLEstimate, answer_logits, answer_states, autocast, chunked_kl_sum, decoder_and_head, forward_kl, paired_batch,
    teacher_mode, teacher_topk, token_level_kl, topk_kl,
)
from .questions import load_questions, split_questions
from .resume import (
    OutputWriteError, ResumeSettings, StopRequest, WorkDir, load_trainable_state, rng_state, set_rng_state,
    trainable_state,
)
from .trajectories import Trajectory, chat_prefix, encode_like_lm_eval, sample_trajectories, score_heldout

BAKE_RECORD = "baking.json"
FORMAT = "lm-eval-baking/bake"
FORMAT_VERSION = 1


@dataclass
class BakeConfig:
    """Everything that decides what a bake produces. Serialised into baking.json."""

    prompt: str
    """The system prompt to bake in (persona, instruction, few-shot examples...)."""
    model: str = models.DEFAULT_MODEL
    """HF model id, local directory, or 'default' (the embedded SmolLM2-135M-Instruct)."""
    questions: str = "builtin"
    """'builtin' (320 questions, 16 categories) or a .txt / .jsonl file of user questions."""
    heldout_fraction: float = 0.2
    """Share of questions kept out of training; held-out KL is measured on them."""
    samples_per_question: int = 1
    """Training answers sampled per training question."""
    heldout_samples_per_question: int = 1
    """Held-out answers per held-out question (always sampled at T=1 so KL estimates are unbiased)."""
    max_new_tokens: int = 48
    """Length cap of each sampled answer, in tokens."""
    temperature: float = 1.0
    """Sampling temperature of training answers. The authors found T>1 helped on 7B models;
    on a 135M model T=2 already yields word salad, so 1.0 is the default here."""
    lora_rank: int = 16
    lora_alpha: float = 32.0
    """LoRA scale is alpha/rank. The authors' alpha=1 at rank 32 shrinks updates 32x; keep alpha/rank near 1-2."""
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names LoRA wraps (the authors' choice: attention projections)."""
    learning_rate: float = 2e-3
    epochs: int = 1
    """One epoch over 256 trajectories already removes ~85% of the prompt's KL on the default model."""
    batch_size: int = 8
    """Trajectories per optimiser step. Under `accelerate launch` this is the global batch, shared out
    over the processes, so N processes give the same steps as one."""
    top_k: int | None = None
    """None: full-vocabulary KL. k: teacher's top-k tokens plus one bucket for the rest."""
    cache_teacher: bool = False
    """Keep each trajectory's teacher top-k log-probs (needs top_k) instead of a teacher forward every step.
    `bake` captures them while sampling the training answers (the sampler runs the teacher anyway), so no
    step runs the teacher; a bake resumed after sampling, or PromptBaker on trajectories without them,
    computes each once, the first time it is trained on. Memory: 12 bytes x top_k per answer token."""
    length_bucketing: bool = False
    """Put trajectories of similar length in the same batch (the batch order stays shuffled), so less
    compute goes to padding. Changes which trajectories share a batch, not what is trained on."""
    kl_chunk_size: int | None = None
    """None: the LM head and KL run on all answer positions of a batch at once. n: n positions at a time
    with activation checkpointing, so the [positions x vocabulary] logits never exist whole; bounds memory
    for large vocabularies and batches, at the cost of recomputing the LM head in backward."""
    precision: str = "bf16"
    """'bf16': bf16 autocast for forward passes (LoRA weights and the loss stay fp32); 'fp32': none."""
    device: str = "auto"
    """'auto' (CUDA when available, else CPU), or any torch device string such as 'cpu' or 'cuda:1'."""
    generation_batch_size: int = 64
    """Answers sampled in parallel (KV-cached); larger is faster until memory runs out."""
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "BakeConfig":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise BakingError(f"unknown bake settings {sorted(unknown)}; remove them")
        return cls(**data)

    def validate(self) -> None:
        if not self.prompt or not self.prompt.strip():
            raise BakingError("the prompt is empty; pass --prompt TEXT or --prompt-file FILE with the text to bake")
        checks = [
            (self.samples_per_question >= 1, "--samples-per-question must be at least 1"),
            (self.heldout_samples_per_question >= 1, "--heldout-samples-per-question must be at least 1"),
            (self.max_new_tokens >= 1, "--max-new-tokens must be at least 1"),
            (self.temperature > 0, "--temperature must be above 0 (sampling, not greedy)"),
            (self.lora_rank >= 1, "--lora-rank must be at least 1"),
            (self.learning_rate > 0, "--learning-rate must be above 0"),
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.top_k is None or self.top_k >= 1, "--top-k must be at least 1 (omit it for full-vocabulary KL)"),
            (not self.cache_teacher or self.top_k is not None,
             "--cache-teacher keeps the teacher's top-k log-probs: pass --top-k K as well (e.g. 64)"),
            (self.kl_chunk_size is None or self.kl_chunk_size >= 1, "--kl-chunk-size must be at least 1"),
            (self.precision in ("bf16", "fp32"), "--precision must be bf16 or fp32"),
        ]
        for ok, message in checks:
            if not ok:
                raise BakingError(message)

    @property
    def autocast_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.precision == "bf16" else torch.float32


@dataclass
class BakeResult:
    output: Path
    base_model: str
    reference_kl: KLEstimate
    """Held-out KL(prompted base ‖ unprompted base): what baking has to remove."""
    final_kl: KLEstimate
    """Held-out KL(prompted base ‖ baked model)."""
    epoch_kl: list[KLEstimate]
    reused: bool = False
    resumed_from: dict | None = None
    """{"epoch": E, "step": S} when this run continued an interrupted bake after step S of epoch E."""

    @property
    def kl_ratio(self) -> float:
        return self.final_kl.per_token / self.reference_kl.per_token

    def lm_eval_command(self) -> str:
        return (
            f"lm_eval --model hf --model_args pretrained={self.base_model},peft={self.output} "
            "--apply_chat_template --device cpu --batch_size 8 "
            '--include_path "$(lm-eval-baking tasks-path)" --tasks baking_mckl'
        )


class PromptBaker:
    """Trains a LoRA adapter so the unprompted model matches the prompted one.

    `model` is a PEFT model: with its adapter disabled it is the teacher's
    weights. (Prompt pursuit hands in a model whose earlier rounds are merged
    into the base weights, so the same class bakes every round.) `workers`
    says which share of each batch this process trains on under
    `accelerate launch`.
    """

    def __init__(self, model, tokenizer, config: BakeConfig, *, progress: bool = True,
                 workers: parallel.Workers = parallel.SINGLE):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.progress = progress
        self.workers = workers
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=config.learning_rate, weight_decay=0.0)
        self._prefix_cache: dict[tuple[str, bool], list[int]] = {}
        # (question, answer ids) -> teacher top-k (log-probs, token ids) at its answer positions; see cache_teacher.
        self._teacher_cache: dict[tuple[str, tuple[int, ...]], tuple[torch.Tensor, torch.Tensor]] = {}

    def prefix(self, question: str, with_prompt: bool) -> list[int]:
        key = (question, with_prompt)
        if key not in self._prefix_cache:
            prompt = self.config.prompt if with_prompt else None
            self._prefix_cache[key] = encode_like_lm_eval(self.tokenizer, chat_prefix(self.tokenizer, question, prompt))
        return self._prefix_cache[key]

    def _paired(self, trajectories: list[Trajectory]):
        return paired_batch(
            [self.prefix(t.question, True) for t in trajectories],
            [self.prefix(t.question, False) for t in trajectories],
            [t.answer_ids for t in trajectories],
            self.tokenizer.pad_token_id,
        )

    def compute_loss(self, trajectories: list[Trajectory], n_tokens: int | None = None) -> torch.Tensor:
        """Forward KL(teacher ‖ student) summed over answer tokens, divided by `n_tokens` (default: their count).

        A data-parallel process passes the token count of the whole global
        batch, so the processes' gradients add up to the gradient one process
        would compute on that batch.
        """
        batch = self._paired(trajectories)
        n_tokens = n_tokens or batch.n_answer_tokens
        split = decoder_and_head(self.model)
        with autocast(self.model.device, self.config.autocast_dtype):
            teacher = self.teacher(trajectories, batch)
            if self.config.kl_chunk_size and split is not None:
                states = answer_states(self.model, batch.student_ids, batch.student_mask, batch.student_positions)
                total = chunked_kl_sum(split[1], states, teacher, self.config.kl_chunk_size, self.config.top_k)
            else:
                student = answer_logits(self.model, batch.student_ids, batch.student_mask, batch.student_positions)
                if isinstance(teacher, tuple):  # cached top-k teacher
                    total = topk_kl(*teacher, torch.log_softmax(student.float(), dim=-1)).sum()
                else:
                    total = forward_kl(teacher, student, self.config.top_k).sum()
        return total / n_tokens

    def teacher(self, trajectories: list[Trajectory], batch) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The teacher at the batch's answer positions: adapter off, prompt in context, no gradient.

        [N, V] logits, or with cache_teacher the (top-k log-probs, token ids)
        pair, computed only for trajectories not seen in an earlier step.
        """
        if not self.config.cache_teacher:
            with torch.no_grad(), teacher_mode(self.model):
                return answer_logits(self.model, batch.teacher_ids, batch.teacher_mask, batch.teacher_positions)
        keys = [(t.question, tuple(t.answer_ids)) for t in trajectories]
        for key, t in zip(keys, trajectories):
            # Top-k captured while sampling from the prompted base (sample_trajectories(capture_top_k=...)).
            if key not in self._teacher_cache and t.teacher_top_k is not None \
                    and t.teacher_top_k[0].shape[-1] == self.config.top_k:
                self._teacher_cache[key] = tuple(part.to(self.model.device) for part in t.teacher_top_k)
        missing = list({k: t for k, t in zip(keys, trajectories) if k not in self._teacher_cache}.items())
        if missing:
            todo = self._paired([t for _, t in missing])
            with torch.no_grad(), teacher_mode(self.model):
                logits = answer_logits(self.model, todo.teacher_ids, todo.teacher_mask, todo.teacher_positions)
            values, index = teacher_topk(logits, self.config.top_k)
            lengths = [len(t.answer_ids) for _, t in missing]
            for (key, _), v, i in zip(missing, values.split(lengths), index.split(lengths)):
                self._teacher_cache[key] = (v, i)
        return (torch.cat([self._teacher_cache[k][0] for k in keys]),
                torch.cat([self._teacher_cache[k][1] for k in keys]))

    def batches(self, trajectories: list[Trajectory], epoch: int) -> list[list[Trajectory]]:
        """The epoch's global batches: a seeded shuffle, optionally grouped by length (length_bucketing)."""
        order = list(trajectories)
        rng = random.Random(self.config.seed * 1000 + epoch)
        rng.shuffle(order)
        if self.config.length_bucketing:
            # A stable sort of the shuffled order: equal lengths stay in random order.
            order.sort(key=lambda t: len(self.prefix(t.question, False)) + len(t.answer_ids))
        size = self.config.batch_size
        batches = [order[i:i + size] for i in range(0, len(order), size)]
        if self.config.length_bucketing:
            rng.shuffle(batches)  # so the steps don't run from short to long
        return batches

    def train_epoch(self, trajectories: list[Trajectory], epoch: int, *, start: int = 0,
                    losses: list[float] | None = None,
                    after_step: Callable[[int, list[float]], None] | None = None) -> float:
        """One pass over `trajectories` in a seeded random order; returns the mean loss.

        Every process forms the same global batches and trains on its share of
        each; the LoRA gradients are then summed over the processes, so every
        process takes the same optimiser step.

        A resumed bake passes `start` (steps of this epoch already taken; the
        order is seeded, so the remaining batches are the same) and their
        `losses`. `after_step(step, losses)` runs after every optimiser step:
        that is where checkpoints are written.
        """
        self.model.train()
        losses = list(losses or [])
        batches = self.batches(trajectories, epoch)
        show = self.progress and self.workers.is_main
        bar = tqdm(batches[start:], desc=f"epoch {epoch}/{self.config.epochs}", unit="step", disable=not show,
                   initial=start, total=len(batches))
        for step, batch in enumerate(bar, start + 1):
            mine = self.workers.shard(batch)
            if mine:
                loss = self.compute_loss(mine, n_tokens=sum(len(t.answer_ids) for t in batch))
                loss.backward()
            else:  # a last batch smaller than the number of processes: nothing to add
                loss = torch.zeros(())
            loss = self._sum_over_workers(loss)
            if not math.isfinite(loss):
                raise BakingError(
                    f"the loss became {loss} at epoch {epoch} step {step}; lower --learning-rate "
                    f"(now {self.config.learning_rate}) or use --precision fp32"
                )
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss)
            bar.set_postfix(kl=f"{loss:.4f}")
            if after_step is not None:
                after_step(step, losses)
        bar.close()
        self.model.eval()
        return sum(losses) / len(losses)

    def _sum_over_workers(self, loss: torch.Tensor) -> float:
        """Sum the LoRA gradients and the loss over the processes (one all-reduce); returns the batch loss."""
        if not self.workers.distributed:
            return loss.item()
        for p in self.trainable:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        total = loss.detach().float().reshape(1).to(self.trainable[0].device)
        self.workers.sum_([p.grad for p in self.trainable] + [total])
        return total.item()

    def heldout_kl(self, heldout: list[Trajectory], *, student_is_base: bool = False) -> KLEstimate:
        return token_level_kl(
            self.model, self.tokenizer, heldout, self.config.prompt,
            student_is_base=student_is_base, top_k=None, batch_size=self.config.batch_size * 2,
            autocast_dtype=None, progress=self.progress,  # fp32: these are the reported numbers
            desc="held-out KL (base)" if student_is_base else "held-out KL", workers=self.workers,
        )


def attach_lora(model, config: BakeConfig):
    """Wrap `model` in a fresh, seeded LoRA adapter."""
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in config.target_modules if m not in present]
    if missing:
        raise BakingError(f"target modules {missing} not in this model; pick from e.g. {sorted(present)[:12]}")
    torch.manual_seed(config.seed)
    lora = LoraConfig(
        r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules), task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def bake(config: BakeConfig | None = None, output: str | Path = "adapters/baked", *, overwrite: bool = False,
         resume: bool = False, progress: bool = True, teacher=None, teacher_id: str | None = None,
         trust_remote_code: bool = False, resume_settings: ResumeSettings | None = None,
         **settings) -> BakeResult:
    """Bake `config.prompt` into a LoRA adapter written to `output` (atomically).

    `bake(prompt="You are a pirate.", output="adapters/pirate")` works too:
    keyword settings build the BakeConfig.

    Work in progress lives in `.NAME.partial` beside `output` (see resume.py)
    and survives a kill. `resume=True` continues it (and simply starts when
    there is none); without it, a leftover folder is an error that says to pass
    --resume or --overwrite (which discards it).

    `teacher` is an optional (model, tokenizer) pair to bake into instead of
    loading `config.model`: prompt pursuit passes the base with earlier rounds
    merged in. It must be a plain (non-PEFT) model; it is modified in place.
    The adapter still names `config.model` as its base. `teacher_id` names the
    teacher's weights, so a resume cannot mix two teachers' work.

    Under `accelerate launch` (several processes) the bake runs data parallel
    (see `parallel.py`); only the main process writes `output` and the work folder.
    """
    config = config or BakeConfig(**settings)
    config.validate()
    resume_settings = resume_settings or ResumeSettings()
    resume_settings.validate()
    output = Path(output)
    workers = parallel.current(config.device)
    work = WorkDir(output, writer=workers.is_main)
    existing = _existing_bake(output, config, overwrite)
    if existing is not None:
        if workers.is_main:
            _forget_finished_work(work, config)
        return existing
    if work.exists() and not resume and not overwrite:
        work.lock()  # a bake still running there is "busy", not "interrupted"
        work.release()
        raise BakingError(f"an interrupted bake of {output} is in {work.path}; pass --resume to continue it, "
                          "or --overwrite to start over")
    progress = progress and workers.is_main

    watch = Stopwatch()
    with watch.phase("load"):
        questions = load_questions(config.questions)
        train_questions, heldout_questions = split_questions(questions, config.heldout_fraction, config.seed)
        model_path = models.resolve_model(config.model)
        model, tokenizer = teacher or models.load_model(model_path, device=workers.device or config.device,
                                                        trust_remote_code=trust_remote_code)
        _check_prompt_fits(model, tokenizer, config)
        # What a resumed run must match. The base's hash is cached (models.model_fingerprint), so only
        # the first bake on a base pays for reading its weights.
        identity = {"config": config.to_dict(), "questions_sha256": questions_sha256(config),
                    "base_model_sha256": models.model_fingerprint(model_path), "teacher": teacher_id}

    adopted = work.exists() and resume
    if workers.is_main:
        try:
            if work.exists() and not resume:
                work.discard()  # --overwrite without --resume: start over
            if adopted:
                work.adopt(identity)
            else:
                work.create(identity)
        except OSError as e:
            work.release()
            raise _write_error(e, work) from None
        _remove_stale_staging(output)
    workers.barrier()  # the other processes read the folder the main process has just settled
    try:
        result = _bake_into(work, config, output, model, tokenizer, model_path, watch, workers,
                            overwrite=overwrite, progress=progress, settings=resume_settings, adopted=adopted,
                            questions=(train_questions, heldout_questions))
    except OutputWriteError:
        work.release()
        raise
    except BakingError:
        work.discard()  # e.g. the loss diverged: these settings can never finish, so nothing is worth resuming
        raise
    except (OSError, _safetensors_error()) as e:
        work.release()
        raise _write_error(e, work) from None
    except KeyboardInterrupt:
        work.release()
        if work.writer and work.exists() and not (work.path / "data" / "train.jsonl").is_file():
            work.discard()  # nothing worth keeping yet
            raise KeyboardInterrupt(f"nothing was written at {output}") from None
        raise KeyboardInterrupt(f"nothing was written at {output}; the work so far is kept in {work.path}: "
                                "rerun the same command with --resume to continue") from None
    except BaseException:
        work.release()
        raise
    workers.barrier()  # every process returns once the output is in place
    return result


def _bake_into(work: WorkDir, config: BakeConfig, output: Path, model, tokenizer, model_path: str,
               watch: "Stopwatch", workers, *, overwrite: bool, progress: bool, settings: ResumeSettings,
               adopted: bool, questions) -> BakeResult:
    """The bake proper, reading back from `work` whatever an earlier run finished and saving as it goes."""
    state = work.state()
    checkpoint = work.trainer()
    watch.add((checkpoint or state).get("seconds", {}))
    train_questions, heldout_questions = questions

    train = work.trajectories("train")
    if train is None:
        with watch.phase("sampling"), autocast(model.device, config.autocast_dtype):
            train = sample_trajectories(
                model, tokenizer, train_questions, system_prompt=config.prompt,
                samples_per_question=config.samples_per_question, max_new_tokens=config.max_new_tokens,
                temperature=config.temperature, batch_size=config.generation_batch_size, seed=config.seed,
                desc="sampling training answers", progress=progress, workers=workers,
                capture_top_k=config.top_k if config.cache_teacher else None,
            )
        work.save_trajectories("train", train)
        work.update_state(seconds=watch.seconds)
    heldout = work.trajectories("heldout")
    if heldout is None:
        # Held-out answers estimate KL, so they must be true samples of the prompted model: T=1.
        with watch.phase("sampling"), autocast(model.device, config.autocast_dtype):
            heldout = sample_trajectories(
                model, tokenizer, heldout_questions, system_prompt=config.prompt,
                samples_per_question=config.heldout_samples_per_question, max_new_tokens=config.max_new_tokens,
                temperature=1.0, batch_size=config.generation_batch_size, seed=config.seed + 1,
                desc="sampling held-out answers", progress=progress, workers=workers,
            )
        with watch.phase("scoring"):
            score_heldout(model, tokenizer, heldout, config.prompt, batch_size=config.batch_size * 2,
                          progress=progress, workers=workers)
        work.save_trajectories("heldout", heldout)
        work.update_state(seconds=watch.seconds)

    model = attach_lora(model, config)  # seeded: the same fresh adapter in every run, before any restore
    baker = PromptBaker(model, tokenizer, config, progress=progress, workers=workers)
    if state.get("reference_kl"):
        reference_kl = KLEstimate(**state["reference_kl"])
    else:
        with watch.phase("evaluation"):
            reference_kl = baker.heldout_kl(heldout, student_is_base=True)
        work.update_state(reference_kl=asdict(reference_kl), seconds=watch.seconds)

    epochs: list[dict] = []
    first_epoch, first_step, first_losses = 1, 0, []
    if checkpoint is not None:
        load_trainable_state(model, checkpoint["lora"])
        baker.optimizer.load_state_dict(checkpoint["optimizer"])
        set_rng_state(checkpoint["rng"])
        epochs = list(checkpoint["epochs"])
        first_epoch, first_step, first_losses = checkpoint["epoch"], checkpoint["step"], checkpoint["losses"]
    resumed_from = {"epoch": first_epoch, "step": first_step} if adopted else None
    if adopted:
        work.note_resume(resumed_from)
        if progress:
            tqdm.write(f"resuming the bake in {work.path} at epoch {first_epoch}, step {first_step}")

    def save_trainer(epoch: int, step: int, losses: list[float]) -> None:
        work.save_trainer({
            "epoch": epoch, "step": step, "losses": list(losses), "epochs": epochs,
            "lora": trainable_state(model), "optimizer": baker.optimizer.state_dict(), "rng": rng_state(),
            "seconds": dict(watch.seconds),
        })

    stop = StopRequest()
    last_save = time.monotonic()
    stop_message = f"training state saved in {work.path}"
    with stop.installed():
        for epoch in range(first_epoch, config.epochs + 1):
            def after_step(step: int, losses: list[float], epoch: int = epoch) -> None:
                nonlocal last_save
                if stop.requested or time.monotonic() - last_save >= settings.checkpoint_seconds:
                    save_trainer(epoch, step, losses)
                    last_save = time.monotonic()
                if stop.requested:
                    raise KeyboardInterrupt(stop_message)

            resumed = epoch == first_epoch
            with watch.phase("training"):
                loss = baker.train_epoch(train, epoch, start=first_step if resumed else 0,
                                         losses=first_losses if resumed else None, after_step=after_step)
            with watch.phase("evaluation"):
                kl = baker.heldout_kl(heldout)
            epochs.append({"epoch": epoch, "train_loss": loss, "heldout_kl": asdict(kl)})
            work.save_epoch_adapter(model, epoch)
            save_trainer(epoch + 1, 0, [])
            last_save = time.monotonic()
            if progress:
                tqdm.write(f"epoch {epoch}: train KL {loss:.4f}, held-out KL/token {kl.per_token:.4f} "
                           f"(unprompted base {reference_kl.per_token:.4f})")
            if stop.requested:
                raise KeyboardInterrupt(stop_message)

    if work.writer:
        with watch.phase("saving"), staged_directory(output, replace=overwrite) as staging:
            # Copy, not move: a kill before the rename below must leave the work folder whole.
            skip_hidden = shutil.ignore_patterns(".*")  # a half-written epoch checkpoint's staging folder
            shutil.copytree(work.path / "checkpoints", staging / "checkpoints", ignore=skip_hidden)
            shutil.copytree(work.path / "data", staging / "data", ignore=skip_hidden)
            model.save_pretrained(staging)
            answer_tokens = {"generated": sum(len(t.answer_ids) for t in train + heldout),
                             "trained": sum(len(t.answer_ids) for t in train) * config.epochs}
            record = _bake_record(config, model_path, questions_count=(len(train_questions), len(heldout_questions)),
                                  reference_kl=reference_kl, epochs=epochs, performance=watch.report(answer_tokens),
                                  environment=_environment(model.device), resumes=work.state().get("resumes", []))
            write_json(staging / BAKE_RECORD, record)
            (staging / "README.md").write_text(_model_card(config, model_path, record), encoding="utf-8")
        work.discard()  # the output is in place; a kill before this line leaves a folder the next run removes
    return BakeResult(output=output, base_model=model_path, reference_kl=reference_kl,
                      final_kl=KLEstimate(**epochs[-1]["heldout_kl"]),
                      epoch_kl=[KLEstimate(**e["heldout_kl"]) for e in epochs], resumed_from=resumed_from)


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


def _remove_stale_staging(output: Path) -> None:
    """Staging folders of an earlier run of this output that was killed while writing the final copy.

    Called with the work folder locked, so no other bake of `output` is using them.
    """
    output = output.absolute()
    for stale in output.parent.glob(f".{output.name}.staging-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _safetensors_error() -> type:
    from safetensors import SafetensorError

    return SafetensorError


def _write_error(error: Exception, work: WorkDir) -> OutputWriteError:
    """A write that failed (disk full, read-only...) as one line; the work folder stays for --resume."""
    where = getattr(error, "filename", None) or work.output
    reason = getattr(error, "strerror", None) or (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
    kept = f"the work done so far is kept in {work.path}; " if work.exists() else ""
    return OutputWriteError(f"cannot write {where} ({reason}); {kept}free some disk space or pick a writable "
                            "--output, then rerun the same command with --resume")


class Stopwatch:
    """Wall time per named phase, for baking.json and the benchmarks."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def add(self, seconds: dict[str, float]) -> None:
        """Count time an interrupted run spent (restored from its work folder)."""
        for name, value in seconds.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + float(value)

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def report(self, answer_tokens: dict[str, int]) -> dict:
        return {
            "seconds": dict(self.seconds),
            "generation_tokens_per_s": answer_tokens["generated"] / max(self.seconds.get("sampling", 0.0), 1e-9),
            "training_tokens_per_s": answer_tokens["trained"] / max(self.seconds.get("training", 0.0), 1e-9),
            "answer_tokens": answer_tokens,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }


def load_bake_record(directory: str | Path) -> dict:
    path = Path(directory) / BAKE_RECORD
    if not path.is_file():
        raise BakingError(f"{directory} has no {BAKE_RECORD}: it is not a bake; make one with `lm-eval-baking bake`")
    try:
        record = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as e:
        raise BakingError(f"{path} is corrupt ({e.msg}); re-bake with --overwrite") from None
    except (OSError, UnicodeDecodeError, RecursionError) as e:
        raise BakingError(f"{path} cannot be read ({getattr(e, 'strerror', None) or type(e).__name__}); "
                          "re-bake with --overwrite") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise BakingError(f"{path} is not a lm-eval-baking record; re-bake with --overwrite")
    return record


def _existing_bake(output: Path, config: BakeConfig, overwrite: bool) -> BakeResult | None:
    """Reuse an identical finished bake; refuse to clobber anything else without --overwrite."""
    if not output.exists():
        return None
    if not output.is_dir():
        raise BakingError(f"--output {output} is a file; choose a directory path")
    if not any(output.iterdir()) or overwrite:
        return None
    if not (output / BAKE_RECORD).is_file():
        raise BakingError(f"--output {output} is a non-empty folder that is not a bake; choose another path or pass --overwrite")
    record = load_bake_record(output)
    if _with_defaults(record.get("config")) != config.to_dict():
        raise BakingError(
            f"--output {output} holds a different bake (prompt sha256 {record.get('prompt_sha256', '?')[:12]}); "
            "choose another --output or pass --overwrite to replace it"
        )
    epochs = [KLEstimate(**e["heldout_kl"]) for e in record["kl"]["per_epoch"]]
    return BakeResult(output=output, base_model=record["base_model"]["name_or_path"],
                      reference_kl=KLEstimate(**record["kl"]["unprompted_base"]), final_kl=epochs[-1],
                      epoch_kl=epochs, reused=True)


def _with_defaults(recorded) -> dict | None:
    """A recorded config with settings added since it was written set to their defaults (None if unreadable)."""
    try:
        return BakeConfig.from_dict(recorded).to_dict()
    except (BakingError, TypeError):
        return None


def _check_prompt_fits(model, tokenizer, config: BakeConfig) -> None:
    limit = models.model_context_length(model)
    longest = len(encode_like_lm_eval(tokenizer, chat_prefix(tokenizer, "x" * 200, config.prompt)))
    if longest + config.max_new_tokens > limit:
        raise BakingError(
            f"the prompt takes {longest} tokens with its chat template, and with --max-new-tokens "
            f"{config.max_new_tokens} that exceeds the model's context of {limit}; shorten the prompt"
        )


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def questions_sha256(config: BakeConfig) -> str | None:
    """sha256 of the question file (None for the built-in pool, which is versioned with the package)."""
    if config.questions == "builtin":
        return None
    return hashlib.sha256(Path(config.questions).read_bytes()).hexdigest()


def _environment(device) -> dict:
    """What else decides the bits of a bake: on CPU the thread count changes float summation order."""
    import platform

    return {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.version.cuda,
    }


def _bake_record(config: BakeConfig, model_path: str, *, questions_count, reference_kl, epochs,
                 performance, environment: dict | None = None, resumes: list | None = None) -> dict:
    import lm_eval
    import peft
    import platform
    import transformers

    final = epochs[-1]["heldout_kl"]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "prompt_sha256": text_sha256(config.prompt),
        "base_model": {"name_or_path": model_path, "sha256": models.model_fingerprint(model_path),
                       "config_sha256": models.config_fingerprint(model_path)},
        "questions": {
            "source": config.questions,
            "sha256": questions_sha256(config),
            "train": questions_count[0],
            "heldout": questions_count[1],
        },
        "kl": {
            "measure": "exact full-vocabulary KL(prompted base || model) on held-out answers sampled at T=1",
            "unprompted_base": asdict(reference_kl),
            "per_epoch": epochs,
            "final_per_token": final["per_token"],
            "ratio_to_unprompted": final["per_token"] / reference_kl.per_token,
        },
        "performance": performance,
        "data": {"train": "data/train.jsonl", "heldout": "data/heldout.jsonl", "checkpoints": "checkpoints/epoch-N"},
        "versions": {
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "lm_eval": getattr(lm_eval, "__version__", None), "python": platform.python_version(),
            "lm_eval_baking": package_version(),
        },
        "environment": environment or {},
        "resumes": resumes or [],
        "rerun": "lm-eval-baking bake with every `config` value as its --flag (and the same question file, "
                 "checked by questions.sha256) on the base with base_model.sha256, same torch_threads for bitwise equality",
    }


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm-eval-baking")
    except PackageNotFoundError:
        return "source"


def _model_card(config: BakeConfig, model_path: str, record: dict) -> str:
    kl = record["kl"]
    return f"""---
library_name: peft
base_model: {model_path}
tags: [prompt-baking, lora, lm-eval-baking]
---
# Baked prompt adapter

This LoRA adapter makes the base model behave, **without** the prompt below, as
it does **with** it (Prompt Baking, arXiv 2409.13697).

```text
{config.prompt}
```

| held-out KL per answer token | value |
| --- | --- |
| prompted base vs unprompted base | {kl['unprompted_base']['per_token']:.4f} |
| prompted base vs this adapter | {kl['final_per_token']:.4f} |
| ratio | {kl['ratio_to_unprompted']:.1%} |

Evaluate it with lm-evaluation-harness:

```bash
lm_eval --model hf --model_args pretrained={model_path},peft=<this directory> \\
  --apply_chat_template --include_path "$(lm-eval-baking tasks-path)" --tasks baking_mckl
```

`baking.json` records the prompt, base model hash, every setting and the KL
per epoch; `data/` holds the trajectories it was trained and validated on.
"""
