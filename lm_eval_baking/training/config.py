"""BakeConfig: everything that decides what a bake produces.

Each field carries its help text (`utils.settings.setting`), from which the CLI
builds its `--flag`s, so a default and its explanation live here only.

Some settings are resolved per bake (training/plan.py): unset sizes come from
the minimums (`budget`), and LoRA target keywords from the model's layer names.
baking.json records the resolved config; two bakes with equal resolved configs
(and the same question file and base weights) are the same bake.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from ..constants import BUILTIN_QUESTIONS, DEFAULT_MODEL
from ..core.models import DTYPES  # names only: core.models imports torch inside its functions
from ..core.prompts import FORMS, REFRESH_PLACES, checked_messages
from ..errors import BakingError
from ..utils.settings import MAX_TEMPERATURE, from_mapping, in_range, setting
from ..utils.text import listed

PRECISIONS = ("bf16", "fp32")
WEIGHT_COPY = ("auto", "on", "off")
# Sane bounds of the float settings: AdamW moves each weight by about the learning rate per step, so above 1 a
# LoRA is destroyed in a step (the temperature's bound is in utils/settings.py, shared with conversations).
MAX_LEARNING_RATE = 1.0
MAX_LORA_ALPHA = 1e4


def _unset_or_positive(value) -> bool:
    return value is None or value >= 1


@dataclass(frozen=True)
class MultiTurnConfig:
    """Multi-turn baking (docs/multi-turn.md): the training answers are the prompted agent's turns of simulated
    conversations, and the student learns them from the conversation so far, without the prompt.

    Nested in BakeConfig as `multi_turn`: on the command line its fields are the --multi-turn... flags, in a
    recipe the keys of `multi_turn:`; baking.json records them with the rest of the config.
    """

    enabled: bool = setting(False, flag="multi_turn", help=(
        "Bake on simulated conversations, not only single questions: the prompted agent chats with a simulated "
        "user (as `drift-data` builds them) and the student, without the prompt, is trained at every agent turn "
        "on the conversation so far, so the baked behaviour holds deep into a conversation."))
    refresh: bool = setting(True, flag="multi_turn_refresh", help=(
        "With --multi-turn: the teacher reads the prompt again next to the turn it is the target of (just before "
        "the latest user message) besides at the start, so its target at depth is the undrifted behaviour; "
        "--no-multi-turn-refresh: the prompt at the start only, as the agent that was sampled had it."))
    refresh_as: str = setting("auto", choices=REFRESH_PLACES, flag="multi_turn_refresh_as", help=(
        "With --multi-turn-refresh: system (a system message just before the latest user message), user (the "
        "prompt prefixed to the latest user message, for chat templates that take a system message only first) "
        "or auto (system where the model's chat template renders it there, else user; baking.json records which)."))
    min_depth: int = setting(1, flag="multi_turn_min_depth", help=(
        "With --multi-turn: the first agent turn trained on (1: the reply to the simulated user's opener)."))
    max_depth: int = setting(8, flag="multi_turn_max_depth", help=(
        "With --multi-turn: the last agent turn trained on, which is also each conversation's length in agent "
        "turns (a later turn would be generated for nothing)."))
    conversations: int = setting(32, flag="multi_turn_conversations", help=(
        "With --multi-turn: simulated training conversations; each gives one training example per agent turn "
        "from --multi-turn-min-depth to --multi-turn-max-depth (32 x 8 turns: the 256 answers of a plain bake)."))
    heldout_conversations: int = setting(8, flag="multi_turn_heldout_conversations", help=(
        "With --multi-turn: simulated held-out conversations (seeded apart from the training ones); the held-out "
        "KL that picks the adapter and judges the bake is measured on their turns, and recorded per depth."))
    single_turn_mix: float = setting(0.0, flag="multi_turn_single_turn_mix", help=(
        "With --multi-turn: the share of the training set that is single-turn answers to --questions (sampled as "
        "in a plain bake), beside the conversation turns; 0: conversation turns only."))

    by_conversation: bool = setting(True, flag="multi_turn_by_conversation", help=(
        "With --multi-turn: train a conversation's turns in the same steps and read the conversation once, the "
        "student in one forward with the loss at every trained turn, the teacher along one KV cache of the "
        "shared history (about D x T tokens per conversation of D turns of T tokens); "
        "--no-multi-turn-by-conversation: turns shuffled one by one, each re-reading its whole history "
        "(about D² x T / 2; the same loss per turn, kept for comparison)."))

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        checks = [
            (isinstance(self.by_conversation, bool),
             f"--multi-turn-by-conversation is on or off (got {self.by_conversation!r})"),
            (self.refresh_as in REFRESH_PLACES, f"--multi-turn-refresh-as must be one of {', '.join(REFRESH_PLACES)}"),
            (self.min_depth >= 1, f"--multi-turn-min-depth must be at least 1 (got {self.min_depth})"),
            (self.max_depth >= self.min_depth,
             f"--multi-turn-max-depth must be at least --multi-turn-min-depth {self.min_depth} (got {self.max_depth})"),
            (self.conversations >= 1, f"--multi-turn-conversations must be at least 1 (got {self.conversations})"),
            (self.heldout_conversations >= 2, f"--multi-turn-heldout-conversations must be at least 2, so the "
                                              f"held-out KL has a standard error (got {self.heldout_conversations})"),
            (in_range(self.single_turn_mix, low=0, below=1),
             f"--multi-turn-single-turn-mix must be at least 0 and below 1 (got {self.single_turn_mix})"),
        ]
        for ok, message in checks:
            if not ok:
                raise BakingError(message)

    @property
    def depths(self) -> range:
        """The agent turns trained on (and measured on the held-out conversations)."""
        return range(self.min_depth, self.max_depth + 1)

    def sizes(self) -> dict[str, int]:
        """Training and held-out conversation turns, and the single-turn answers `single_turn_mix` adds."""
        turns = self.conversations * len(self.depths)
        single = round(turns * self.single_turn_mix / (1 - self.single_turn_mix))
        return {"conversation_turns": turns, "single_turn_answers": single,
                "heldout_conversation_turns": self.heldout_conversations * len(self.depths)}


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
    samples_per_question: int | None = setting(None, metavar="N", help=(
        "Training answers sampled per training question (default: enough for --min-trajectories; 1 for the "
        "built-in pool, 26 for a file of 12 questions)."))
    heldout_samples_per_question: int | None = setting(None, metavar="N", help=(
        "Held-out answers per held-out question, always sampled at temperature 1 so KL estimates are unbiased "
        "(default: enough for --min-heldout-answers)."))
    min_trajectories: int = setting(256, help=(
        "Training answers to sample at least, when --samples-per-question is not given: small question files "
        "get several answers per question."))
    min_heldout_answers: int = setting(64, help=(
        "Held-out answers to sample at least, when --heldout-samples-per-question is not given, so the held-out "
        "KL has a standard error."))
    min_steps: int = setting(32, help=(
        "Optimiser steps to take at least, when --epochs is not given (epochs = steps / steps per epoch, "
        "rounded up)."))
    max_new_tokens: int = setting(48, help="Length cap of each sampled answer, in tokens.")
    temperature: float = setting(1.0, help=(
        "Sampling temperature of the training answers. The authors found T > 1 helped on 7B models; on the "
        "135M default model T = 2 already gives word salad."))
    lora_rank: int = setting(16, help="LoRA rank r.")
    lora_alpha: float = setting(32.0, help=(
        "LoRA alpha; the update is scaled by alpha / rank. The authors' alpha 1 at rank 32 shrinks updates 32x; "
        "keep alpha / rank near 1-2."))
    lora_dropout: float = setting(0.0, help="Dropout on the LoRA input during training.")
    target_modules: list[str] = setting(default_factory=lambda: ["attention"], help=(
        "Layers LoRA wraps: 'attention' (the linear layers of every attention block, the authors' choice; "
        "q_proj k_proj v_proj o_proj on Llama, c_attn attn.c_proj on GPT-2), 'all-linear' (every linear layer "
        "but the output head), or module names as PEFT matches them. baking.json records what they resolved to."))
    learning_rate: float = setting(2e-3, help="AdamW learning rate of the LoRA weights.")
    epochs: int | None = setting(None, metavar="N", help=(
        "Passes over the training answers (default: enough for --min-steps). One epoch over 256 answers "
        "removes ~83% of the pirate prompt's KL on the default model."))
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
    eval_every: int | None = setting(None, metavar="STEPS", help=(
        "Also measure the held-out KL every this many optimiser steps (it is always measured after each "
        "epoch); with --keep-best the best measurement's adapter is the one written."))
    keep_best: bool = setting(True, help=(
        "Write the adapter with the lowest held-out KL measured during training (the authors kept the best "
        "validation KL), not necessarily the last one; every epoch's adapter stays in checkpoints/."))
    precision: str = setting("bf16", choices=PRECISIONS, help=(
        "bf16: bf16 autocast for forward passes (LoRA weights, loss and reported KL stay fp32); fp32: none."))
    dtype: str = setting("fp32", choices=DTYPES, help=(
        "Precision of the frozen base weights: bf16 or fp16 halve its memory (16 GB instead of 32 GB for 8B "
        "parameters). The LoRA weights, the loss and the reported KL stay fp32."))
    bf16_weight_copy: str = setting("auto", choices=WEIGHT_COPY, help=(
        "With --precision bf16 and fp32 base weights: cast the frozen linear weights to bf16 once and train on "
        "that copy, instead of autocast recasting every weight at every forward (the same values, so the same "
        "loss). Costs half the fp32 weights' size in extra memory; auto: on for CPU bakes, off on accelerators, "
        "where memory is scarcer. The held-out KL always reads the fp32 weights."))
    load_in_4bit: bool = setting(False, help=(
        "QLoRA: hold the frozen base in 4-bit NF4 (bitsandbytes, CUDA only), computing in --dtype (bf16 when "
        "fp32). About 0.52 bytes per parameter of its linear layers (NF4 with double quantisation)."))
    device: str = setting("auto", help="'auto' (CUDA when available, else CPU) or a torch device such as cpu or cuda:1.")
    generation_batch_size: int = setting(64, help=(
        "Answers sampled in parallel (KV-cached); larger is faster until memory runs out."))
    seed: int = setting(0, help="Seeds the held-out split, the sampling, the LoRA initialisation and the data order.")
    multi_turn: MultiTurnConfig = setting(default_factory=MultiTurnConfig, nested=True, help=(
        "Multi-turn baking on simulated conversations (MultiTurnConfig: the --multi-turn... flags)."))

    def __post_init__(self):
        # Read back from baking.json, or a recipe's `bake:` mapping: a mapping of MultiTurnConfig's keys.
        if self.multi_turn is None:
            self.multi_turn = MultiTurnConfig()
        elif isinstance(self.multi_turn, dict):
            self.multi_turn = from_mapping(MultiTurnConfig, self.multi_turn, "multi_turn", what="bake setting")
        self.validate()

    def validate(self) -> None:
        """Every setting on its own, before any model is loaded; each problem is one line naming the flag."""
        if isinstance(self.prompt, list):
            checked_messages(self.prompt)
        elif not isinstance(self.prompt, str) or not self.prompt.strip():
            raise BakingError("the prompt is empty; pass --prompt TEXT or --prompt-file FILE with the text to bake")
        checks = [
            (in_range(self.heldout_fraction, above=0, below=1),
             f"--heldout-fraction must be between 0 and 1 (got {self.heldout_fraction})"),
            (_unset_or_positive(self.samples_per_question), "--samples-per-question must be at least 1"),
            (_unset_or_positive(self.heldout_samples_per_question),
             "--heldout-samples-per-question must be at least 1"),
            (self.min_trajectories >= 1, "--min-trajectories must be at least 1"),
            (self.min_heldout_answers >= 2, "--min-heldout-answers must be at least 2 (a standard error needs 2)"),
            (self.min_steps >= 1, "--min-steps must be at least 1"),
            (_unset_or_positive(self.eval_every), "--eval-every must be at least 1 step"),
            (self.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}"),
            (self.max_new_tokens >= 1, "--max-new-tokens must be at least 1"),
            (in_range(self.temperature, above=0, high=MAX_TEMPERATURE),
             f"--temperature must be a finite number above 0 (sampling, not greedy) and at most {MAX_TEMPERATURE:g} "
             f"(got {self.temperature})"),
            (self.lora_rank >= 1, "--lora-rank must be at least 1"),
            (in_range(self.lora_alpha, above=0, high=MAX_LORA_ALPHA),
             f"--lora-alpha must be a finite number above 0 and at most {MAX_LORA_ALPHA:g} (got {self.lora_alpha})"),
            (in_range(self.lora_dropout, low=0, below=1), "--lora-dropout must be at least 0 and below 1"),
            (bool(self.target_modules), "--target-modules needs at least one module name"),
            (in_range(self.learning_rate, above=0, high=MAX_LEARNING_RATE),
             f"--learning-rate must be a finite number above 0 and at most {MAX_LEARNING_RATE:g} (got "
             f"{self.learning_rate}); LoRA bakes use about 1e-4 to 1e-2"),
            (_unset_or_positive(self.epochs), "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.top_k is None or self.top_k >= 1, "--top-k must be at least 1 (omit it for full-vocabulary KL)"),
            (not self.cache_teacher or self.top_k is not None,
             "--cache-teacher keeps the teacher's top-k log-probs: pass --top-k K as well (e.g. 64)"),
            (self.kl_chunk_size is None or self.kl_chunk_size >= 1, "--kl-chunk-size must be at least 1"),
            (self.prompt_format in FORMS, f"--prompt-format must be one of {', '.join(FORMS)}"),
            (self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
            (self.bf16_weight_copy in WEIGHT_COPY, f"--bf16-weight-copy must be one of {', '.join(WEIGHT_COPY)}"),
            (self.generation_batch_size >= 1, "--generation-batch-size must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise BakingError(message)
        if any(not isinstance(t, str) or not t.strip() for t in self.target_modules):
            raise BakingError("--target-modules takes module names (or 'attention' / 'all-linear'), not empty text")
        if not isinstance(self.multi_turn, MultiTurnConfig):
            raise BakingError("multi_turn takes MultiTurnConfig settings (the --multi-turn... flags)")
        self.multi_turn.validate()
        if self.multi_turn.enabled and (not isinstance(self.prompt, str) or self.prompt_format == "text"):
            raise BakingError("--multi-turn bakes a system prompt into a chat: pass the prompt as text (not chat "
                              "messages) and leave --prompt-format at auto or chat")

    def budget(self, n_train_questions: int, n_heldout_questions: int) -> dict[str, int]:
        """The sizes this config gives a question split: samples per question, epochs, steps.

        Unset sizes come from the minimums: the built-in pool (256 training and
        64 held-out questions) gets 1 answer per question and 1 epoch of 32
        steps at batch 8; a 12-question file (10 + 2) gets 26 answers per
        training question and 32 per held-out one.
        """
        samples = self.samples_per_question or max(1, math.ceil(self.min_trajectories / n_train_questions))
        heldout = self.heldout_samples_per_question or max(
            1, math.ceil(self.min_heldout_answers / n_heldout_questions))
        trajectories = n_train_questions * samples
        multi_turn = {}
        if self.multi_turn.enabled:
            # The conversation turns, plus single-turn answers to the questions only as many as the mix asks for.
            multi_turn = self.multi_turn.sizes()
            single = multi_turn["single_turn_answers"]
            samples = self.samples_per_question or max(1, math.ceil(single / n_train_questions))
            trajectories = multi_turn["conversation_turns"] + single
        steps_per_epoch = math.ceil(trajectories / self.batch_size)
        epochs = self.epochs or max(1, math.ceil(self.min_steps / steps_per_epoch))
        return {"train_questions": n_train_questions, "heldout_questions": n_heldout_questions,
                "samples_per_question": samples, "heldout_samples_per_question": heldout,
                "trajectories": trajectories, "heldout_answers": n_heldout_questions * heldout,
                "epochs": epochs, "steps_per_epoch": steps_per_epoch, "steps": steps_per_epoch * epochs,
                **multi_turn}

    def resolved(self, n_train_questions: int, n_heldout_questions: int,
                 target_modules: list[str] | None = None, refresh_as: str | None = None) -> "BakeConfig":
        """This config with every size and the LoRA targets made concrete: what a bake records and compares.

        Two requests that resolve to the same config are the same bake; a
        default bake of the built-in pool on the default model resolves to the
        settings it always had (1 sample, 1 epoch, q/k/v/o).
        """
        sizes = self.budget(n_train_questions, n_heldout_questions)
        multi_turn = replace(self.multi_turn, refresh_as=refresh_as) if refresh_as else self.multi_turn
        return replace(self, samples_per_question=sizes["samples_per_question"],
                       heldout_samples_per_question=sizes["heldout_samples_per_question"], epochs=sizes["epochs"],
                       target_modules=list(target_modules) if target_modules is not None else list(self.target_modules),
                       multi_turn=multi_turn)

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
        if not in_range(self.checkpoint_seconds, low=0):
            raise BakingError(f"--checkpoint-seconds must be a finite number, 0 or more (got {self.checkpoint_seconds})")
