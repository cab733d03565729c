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
import random
import resource
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import models
from .errors import BakingError
from .io import staged_directory, write_json, write_jsonl
from .kl import KLEstimate, answer_logits, autocast, forward_kl, paired_batch, teacher_mode, token_level_kl
from .questions import load_questions, split_questions
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
    """Trajectories per optimiser step."""
    top_k: int | None = None
    """None: full-vocabulary KL. k: teacher's top-k tokens plus one bucket for the rest."""
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
    into the base weights, so the same class bakes every round.)
    """

    def __init__(self, model, tokenizer, config: BakeConfig, *, progress: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.progress = progress
        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=config.learning_rate, weight_decay=0.0
        )
        self._prefix_cache: dict[tuple[str, bool], list[int]] = {}

    def prefix(self, question: str, with_prompt: bool) -> list[int]:
        key = (question, with_prompt)
        if key not in self._prefix_cache:
            prompt = self.config.prompt if with_prompt else None
            self._prefix_cache[key] = encode_like_lm_eval(self.tokenizer, chat_prefix(self.tokenizer, question, prompt))
        return self._prefix_cache[key]

    def compute_loss(self, trajectories: list[Trajectory]) -> torch.Tensor:
        """Forward KL(teacher ‖ student) summed over answer tokens, divided by their count."""
        batch = paired_batch(
            [self.prefix(t.question, True) for t in trajectories],
            [self.prefix(t.question, False) for t in trajectories],
            [t.answer_ids for t in trajectories],
            self.tokenizer.pad_token_id,
        )
        with autocast(self.model.device, self.config.autocast_dtype):
            with torch.no_grad(), teacher_mode(self.model):
                teacher = answer_logits(self.model, batch.teacher_ids, batch.teacher_mask, batch.teacher_positions)
            student = answer_logits(self.model, batch.student_ids, batch.student_mask, batch.student_positions)
        return forward_kl(teacher, student, self.config.top_k).sum() / batch.n_answer_tokens

    def train_epoch(self, trajectories: list[Trajectory], epoch: int) -> float:
        """One pass over `trajectories` in a seeded random order; returns the mean loss."""
        self.model.train()
        order = list(trajectories)
        random.Random(self.config.seed * 1000 + epoch).shuffle(order)
        batches = [order[i:i + self.config.batch_size] for i in range(0, len(order), self.config.batch_size)]
        losses = []
        bar = tqdm(batches, desc=f"epoch {epoch}/{self.config.epochs}", unit="step", disable=not self.progress)
        for step, batch in enumerate(bar, 1):
            loss = self.compute_loss(batch)
            if not torch.isfinite(loss):
                raise BakingError(
                    f"the loss became {loss.item()} at epoch {epoch} step {step}; lower --learning-rate "
                    f"(now {self.config.learning_rate}) or use --precision fp32"
                )
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.set_postfix(kl=f"{loss.item():.4f}")
        self.model.eval()
        return sum(losses) / len(losses)

    def heldout_kl(self, heldout: list[Trajectory], *, student_is_base: bool = False) -> KLEstimate:
        return token_level_kl(
            self.model, self.tokenizer, heldout, self.config.prompt,
            student_is_base=student_is_base, top_k=None, batch_size=self.config.batch_size * 2,
            autocast_dtype=None, progress=self.progress,  # fp32: these are the reported numbers
            desc="held-out KL (base)" if student_is_base else "held-out KL",
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
         progress: bool = True, teacher=None, **settings) -> BakeResult:
    """Bake `config.prompt` into a LoRA adapter written to `output` (atomically).

    `bake(prompt="You are a pirate.", output="adapters/pirate")` works too:
    keyword settings build the BakeConfig.

    `teacher` is an optional (model, tokenizer) pair to bake into instead of
    loading `config.model`: prompt pursuit passes the base with earlier rounds
    merged in. It must be a plain (non-PEFT) model; it is modified in place.
    The adapter still names `config.model` as its base.
    """
    config = config or BakeConfig(**settings)
    config.validate()
    output = Path(output)
    existing = _existing_bake(output, config, overwrite)
    if existing is not None:
        return existing

    watch = Stopwatch()
    with watch.phase("load"):
        questions = load_questions(config.questions)
        train_questions, heldout_questions = split_questions(questions, config.heldout_fraction, config.seed)
        model_path = models.resolve_model(config.model)
        model, tokenizer = teacher or models.load_model(model_path, device=config.device)
        _check_prompt_fits(model, tokenizer, config)

    with watch.phase("sampling"), autocast(model.device, config.autocast_dtype):
        train = sample_trajectories(
            model, tokenizer, train_questions, system_prompt=config.prompt,
            samples_per_question=config.samples_per_question, max_new_tokens=config.max_new_tokens,
            temperature=config.temperature, batch_size=config.generation_batch_size, seed=config.seed,
            desc="sampling training answers", progress=progress,
        )
        # Held-out answers estimate KL, so they must be true samples of the prompted model: T=1.
        heldout = sample_trajectories(
            model, tokenizer, heldout_questions, system_prompt=config.prompt,
            samples_per_question=config.heldout_samples_per_question, max_new_tokens=config.max_new_tokens,
            temperature=1.0, batch_size=config.generation_batch_size, seed=config.seed + 1,
            desc="sampling held-out answers", progress=progress,
        )
    with watch.phase("scoring"):
        score_heldout(model, tokenizer, heldout, config.prompt, batch_size=config.batch_size * 2, progress=progress)

    model = attach_lora(model, config)
    baker = PromptBaker(model, tokenizer, config, progress=progress)
    with watch.phase("evaluation"):
        reference_kl = baker.heldout_kl(heldout, student_is_base=True)

    epochs: list[dict] = []
    with staged_directory(output, replace=overwrite) as staging:
        for epoch in range(1, config.epochs + 1):
            with watch.phase("training"):
                loss = baker.train_epoch(train, epoch)
            with watch.phase("evaluation"):
                kl = baker.heldout_kl(heldout)
            epochs.append({"epoch": epoch, "train_loss": loss, "heldout_kl": asdict(kl)})
            model.save_pretrained(staging / "checkpoints" / f"epoch-{epoch}")
            if progress:
                tqdm.write(f"epoch {epoch}: train KL {loss:.4f}, held-out KL/token {kl.per_token:.4f} "
                           f"(unprompted base {reference_kl.per_token:.4f})")

        with watch.phase("saving"):
            model.save_pretrained(staging)
            write_jsonl(staging / "data" / "train.jsonl", (t.to_dict() for t in train))
            write_jsonl(staging / "data" / "heldout.jsonl", (t.to_dict() for t in heldout))
            answer_tokens = {"generated": sum(len(t.answer_ids) for t in train + heldout),
                             "trained": sum(len(t.answer_ids) for t in train) * config.epochs}
            record = _bake_record(config, model_path, questions_count=(len(train_questions), len(heldout_questions)),
                                  reference_kl=reference_kl, epochs=epochs, performance=watch.report(answer_tokens))
            write_json(staging / BAKE_RECORD, record)
            (staging / "README.md").write_text(_model_card(config, model_path, record), encoding="utf-8")
    return BakeResult(output=output, base_model=model_path, reference_kl=reference_kl,
                      final_kl=KLEstimate(**epochs[-1]["heldout_kl"]),
                      epoch_kl=[KLEstimate(**e["heldout_kl"]) for e in epochs])


class Stopwatch:
    """Wall time per named phase, for baking.json and the benchmarks."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

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
            "generation_tokens_per_s": answer_tokens["generated"] / self.seconds["sampling"],
            "training_tokens_per_s": answer_tokens["trained"] / self.seconds["training"],
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
    if record.get("config") != config.to_dict():
        raise BakingError(
            f"--output {output} holds a different bake (prompt sha256 {record.get('prompt_sha256', '?')[:12]}); "
            "choose another --output or pass --overwrite to replace it"
        )
    epochs = [KLEstimate(**e["heldout_kl"]) for e in record["kl"]["per_epoch"]]
    return BakeResult(output=output, base_model=record["base_model"]["name_or_path"],
                      reference_kl=KLEstimate(**record["kl"]["unprompted_base"]), final_kl=epochs[-1],
                      epoch_kl=epochs, reused=True)


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


def _bake_record(config: BakeConfig, model_path: str, *, questions_count, reference_kl, epochs,
                 performance) -> dict:
    import peft
    import transformers

    final = epochs[-1]["heldout_kl"]
    question_file = None if config.questions == "builtin" else Path(config.questions)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "prompt_sha256": text_sha256(config.prompt),
        "base_model": {"name_or_path": model_path, "sha256": models.model_fingerprint(model_path)},
        "questions": {
            "source": config.questions,
            "sha256": hashlib.sha256(question_file.read_bytes()).hexdigest() if question_file else None,
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
            "lm_eval_baking": package_version(),
        },
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
