"""BakeConfig: everything that decides what a bake produces.

Each field carries its help text (`utils.settings.setting`), from which the CLI
builds its `--flag`s, so a default and its explanation live here only. The
whole config is serialised into baking.json; two bakes with equal configs
(and the same question file and base weights) are the same bake.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..constants import BUILTIN_QUESTIONS, DEFAULT_MODEL
from ..core.prompts import FORMS, checked_messages
from ..errors import BakingError
from ..utils.settings import setting
from ..utils.text import listed

PRECISIONS = ("bf16", "fp32")



@dataclass
class BakeConfig:
    """Everything that decides what a bake produces. Serialised into baking.json."""

    prompt: str | list = setting(help=(
        "The prompt to bake in: a system prompt such as a persona, an instruction, a tool description or "
        "few-shot examples; or a list of chat messages ({role, content}) placed before the question."))
    prompt_format: str = setting("auto", choices=("auto", "chat", "text"), help=(
        "How the prompt is placed before the question, as lm_eval builds a context: chat (inside the model's "
        "chat template: a string is the system message, a list its turns; lm_eval --apply_chat_template) or "
        "text (a plain-text prefix glued to the question; lm_eval without --apply_chat_template). auto: chat "
        "when the model has a chat template."))
    model: str = setting(DEFAULT_MODEL, help=(
        "Base model: 'default' (the embedded SmolLM2-135M-Instruct), a HF model id already in the local cache, "
        "or a local model directory."))
    questions: str = setting(BUILTIN_QUESTIONS, help=(
        "Questions the answers are sampled for: 'builtin' (320 questions in 16 categories) or a question file "
        "(.txt one per line, .jsonl/.json objects with a \"question\" field, or .csv/.tsv with a question column)."))
    heldout_fraction: float = setting(0.2, help=(
        "Share of the questions kept out of training; the held-out KL, and baking_mckl, are measured on them."))
    samples_per_question: int = setting(1, help="Training answers sampled per training question.")
    heldout_samples_per_question: int = setting(1, help=(
        "Held-out answers per held-out question (always sampled at temperature 1, so KL estimates are unbiased)."))
    max_new_tokens: int = setting(48, help="Length cap of each sampled answer, in tokens.")
    temperature: float = setting(1.0, help=(
        "Sampling temperature of the training answers. The authors found T > 1 helped on 7B models; on the "
        "135M default model T = 2 already gives word salad."))
    lora_rank: int = setting(16, help="LoRA rank r.")
    lora_alpha: float = setting(32.0, help=(
        "LoRA alpha; the update is scaled by alpha / rank. The authors' alpha 1 at rank 32 shrinks updates 32x; "
        "keep alpha / rank near 1-2."))
    lora_dropout: float = setting(0.0, help="Dropout on the LoRA input during training.")
    target_modules: list[str] = setting(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], help=(
        "Names of the modules LoRA wraps (the authors' choice: the attention projections)."))
    learning_rate: float = setting(2e-3, help="AdamW learning rate of the LoRA weights.")
    epochs: int = setting(1, help=(
        "Passes over the training answers. One epoch over 256 answers removes ~83% of the pirate prompt's KL "
        "on the default model."))
    batch_size: int = setting(8, help=(
        "Answers per optimiser step. Under `accelerate launch` this is the global batch, shared out over the "
        "processes, so N processes take the same steps as one."))
    top_k: int | None = setting(None, metavar="K", help=(
        "Compare teacher and student on the teacher's top-k tokens plus one bucket for the rest, instead of the "
        "full vocabulary (a lower bound of the full KL)."))
    cache_teacher: bool = setting(False, help=(
        "With --top-k: keep each answer's teacher top-k log-probs, captured while sampling, instead of running "
        "the teacher at every step (12 bytes x k per answer token)."))
    length_bucketing: bool = setting(False, help=(
        "Batch answers of similar length together (the batch order stays shuffled), so less compute goes to "
        "padding."))
    kl_chunk_size: int | None = setting(None, metavar="N", help=(
        "Run the LM head and KL this many answer positions at a time, with activation checkpointing, so the "
        "positions x vocabulary logits never exist whole (for large vocabularies)."))
    precision: str = setting("bf16", choices=PRECISIONS, help=(
        "bf16: bf16 autocast for forward passes (LoRA weights, loss and reported KL stay fp32); fp32: none."))
    device: str = setting("auto", help="'auto' (CUDA when available, else CPU) or a torch device such as cpu or cuda:1.")
    generation_batch_size: int = setting(64, help=(
        "Answers sampled in parallel (KV-cached); larger is faster until memory runs out."))
    seed: int = setting(0, help="Seeds the held-out split, the sampling, the LoRA initialisation and the data order.")

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Every setting on its own, before any model is loaded; each problem is one line naming the flag."""
        if isinstance(self.prompt, list):
            checked_messages(self.prompt)
        elif not isinstance(self.prompt, str) or not self.prompt.strip():
            raise BakingError("the prompt is empty; pass --prompt TEXT or --prompt-file FILE with the text to bake")
        checks = [
            (0 < self.heldout_fraction < 1, f"--heldout-fraction must be between 0 and 1 (got {self.heldout_fraction})"),
            (self.samples_per_question >= 1, "--samples-per-question must be at least 1"),
            (self.heldout_samples_per_question >= 1, "--heldout-samples-per-question must be at least 1"),
            (self.max_new_tokens >= 1, "--max-new-tokens must be at least 1"),
            (self.temperature > 0, "--temperature must be above 0 (sampling, not greedy)"),
            (self.lora_rank >= 1, "--lora-rank must be at least 1"),
            (self.lora_alpha > 0, "--lora-alpha must be above 0"),
            (0 <= self.lora_dropout < 1, "--lora-dropout must be at least 0 and below 1"),
            (bool(self.target_modules), "--target-modules needs at least one module name"),
            (self.learning_rate > 0, "--learning-rate must be above 0"),
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.top_k is None or self.top_k >= 1, "--top-k must be at least 1 (omit it for full-vocabulary KL)"),
            (not self.cache_teacher or self.top_k is not None,
             "--cache-teacher keeps the teacher's top-k log-probs: pass --top-k K as well (e.g. 64)"),
            (self.kl_chunk_size is None or self.kl_chunk_size >= 1, "--kl-chunk-size must be at least 1"),
            (self.prompt_format in FORMS, f"--prompt-format must be one of {', '.join(FORMS)}"),
            (self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
            (self.generation_batch_size >= 1, "--generation-batch-size must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise BakingError(message)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "BakeConfig":
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise BakingError(f"unknown bake settings {listed(sorted(map(str, unknown)))}; remove them")
        return cls(**data)

    @property
    def autocast_dtype(self):
        import torch

        return torch.bfloat16 if self.precision == "bf16" else torch.float32


@dataclass
class ResumeSettings:
    """How often a bake saves its training state. Not part of BakeConfig: it never changes the result."""

    checkpoint_seconds: float = setting(300.0, help=(
        "Save the training state at least this often during an epoch (and always after each epoch), so a kill "
        "loses at most this much training; 0 saves after every step."))

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if not self.checkpoint_seconds >= 0:
            raise BakingError(f"--checkpoint-seconds must be 0 or more (got {self.checkpoint_seconds})")
