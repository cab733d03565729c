"""PromptBaker: trains a LoRA adapter so the unprompted model matches the prompted one.

    θ_u = argmin KL( P_θ(· | u, x) ‖ P_θu(· | x) )   over answers y ~ P_θ(· | u, x)

One model sits in memory. The teacher is that model with the adapter switched
off and the prompt u in its context; the student is the same model with the
adapter on and no prompt. Both read the same question x and the same sampled
answer tokens y; only answer positions count in the loss (`prompt_baking_loss`).
"""

from __future__ import annotations

import contextlib
import math
import random
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..core.batching import (
    answer_logits, answer_states, autocast, decoder_and_head, packed_rows, paired_batch, teacher_mode,
)
from ..core.chat import encode_like_lm_eval
from ..core.kl import KLEstimate, chunked_kl_sum, forward_kl, teacher_topk, token_level_kl, topk_kl
from ..core.lora_targets import resolve_targets
from ..core.parallel import SINGLE, Workers
from ..core.prefix_cache import SharedPrefix, teacher_prefix
from ..core.prompts import BakePrompt
from ..core.sampling import Trajectory
from ..core.shared_history import can_walk, shared_history_logits
from ..core.weight_copy import FrozenWeightCopies
from ..errors import BakingError
from .config import BakeConfig
from .multi_turn import teacher_prompt


def prompt_baking_loss(teacher, student_logits: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    """Σ over answer positions of KL(teacher ‖ student): the prompt-baking objective (forward KL, teacher first).

    `teacher` is [N, V] logits of the prompted model, or a (top-k log-probs,
    token ids) pair of [N, k] tensors captured earlier (`cache_teacher`); then
    the student is compared on those k tokens plus one bucket for the rest.
    """
    if isinstance(teacher, tuple):
        return topk_kl(*teacher, torch.log_softmax(student_logits.float(), dim=-1)).sum()
    return forward_kl(teacher, student_logits, top_k).sum()


class LossDiverged(BakingError):
    """The loss became inf or nan: these settings can never finish (bake() drops its own fresh work folder)."""


class BakingStep(torch.nn.Module):
    """The part of a training step that needs gradients, as one module: the summed KL of a paired batch.

    Teacher (adapter off, prompt in context, no gradient) and student (adapter
    on, no prompt) both run inside `forward`, so when accelerate wraps this
    module (DDP, FSDP, DeepSpeed) every pass over the base goes through the
    wrapper and its hooks: DDP's gradient all-reduce, FSDP's parameter gathers.
    """

    def __init__(self, model, config: BakeConfig, teacher_model=None, teacher_prefix: SharedPrefix | None = None):
        super().__init__()
        self.model = model
        # The prompt's tokens, read once by the frozen teacher (core.prefix_cache); None reads every context whole.
        self.teacher_prefix = teacher_prefix
        # A tuple, so torch does not register the frozen teacher as a submodule (its weights must stay out of
        # the optimiser, of accelerate's wrapping and of the saved adapter).
        self._teacher_model = (teacher_model,)
        self.top_k = config.top_k
        self.kl_chunk_size = config.kl_chunk_size

    @contextlib.contextmanager
    def teacher(self):
        """The prompted teacher's weights: the separate teacher model when there is one, else the student's own
        with the adapter off."""
        separate = self._teacher_model[0]
        if separate is not None:
            yield separate
            return
        with teacher_mode(self.model):
            yield self.model

    def teacher_logits(self, ids, mask, positions) -> torch.Tensor:
        """The prompted teacher's answer logits of a paired batch's teacher side."""
        with self.teacher() as teacher:
            return answer_logits(teacher, ids, mask, positions, self.teacher_prefix)

    def teacher_logits_along_conversations(self, sequences: list[list[int]],
                                           answer_lengths: list[int]) -> torch.Tensor:
        """The same logits for whole teacher sequences, their shared histories read once
        (core.shared_history); not through accelerate's wrapper, so not under a sharding engine."""
        with self.teacher() as teacher:
            return shared_history_logits(teacher, sequences, answer_lengths, self.teacher_prefix)

    def forward(self, student_ids, student_mask, student_positions, teacher_ids=None, teacher_mask=None,
                teacher_positions=None, teacher_top_logp=None, teacher_top_index=None, teacher_top_k: int = 0,
                teacher_logits=None):
        """Σ KL(teacher ‖ student) over the answer positions; or, with `teacher_top_k`, only the teacher's
        top-k (log-probs, token ids) at the teacher_* inputs (for the teacher cache). The teacher comes as
        teacher_* inputs, as top-k (log-probs, token ids), or as `teacher_logits` already computed."""
        if teacher_top_k:
            with torch.no_grad():
                return teacher_topk(self.teacher_logits(teacher_ids, teacher_mask, teacher_positions), teacher_top_k)
        if teacher_top_logp is not None:
            teacher = (teacher_top_logp, teacher_top_index)
        elif teacher_logits is not None:
            teacher = teacher_logits
        else:
            with torch.no_grad():
                teacher = self.teacher_logits(teacher_ids, teacher_mask, teacher_positions)
        split = decoder_and_head(self.model)
        if self.kl_chunk_size and split is not None:
            states = answer_states(self.model, student_ids, student_mask, student_positions)
            return chunked_kl_sum(split[1], states, teacher, self.kl_chunk_size, self.top_k)
        student = answer_logits(self.model, student_ids, student_mask, student_positions)
        return prompt_baking_loss(teacher, student, self.top_k)


class PromptBaker:
    """Trains a LoRA adapter so the unprompted model matches the prompted one.

    `model` is a PEFT model: with its adapter disabled it is the teacher's
    weights. (Prompt pursuit hands in a model whose earlier rounds are merged
    into the base weights, so the same class bakes every round.) A composed
    stage whose target is another model (the original base prompted with
    every prompt so far) passes it as `teacher_model`. `workers`
    says which share of each batch this process trains on under
    `accelerate launch`, and prepares the training step with accelerate's engine.
    """

    def __init__(self, model, tokenizer, config: BakeConfig, *, progress: bool = True,
                 workers: Workers = SINGLE, teacher_model=None):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.progress = progress
        self.workers = workers
        self.teacher_model = teacher_model
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.0)
        # The teacher's context is the prompt + question, the student's the question alone, both as lm_eval renders
        # them; in a multi-turn bake both after the conversation so far, the teacher's with the prompt refreshed.
        self.prompt = teacher_prompt(BakePrompt.from_setting(config.prompt, config.prompt_format, tokenizer), config)
        # Sharded engines (FSDP, DeepSpeed) gather parameters per forward; the prompt's cache is not tried there.
        prefix = None if workers.sharded else teacher_prefix(self.prompt, tokenizer)
        # A multi-turn bake trains each conversation's turns together and reads the conversation once (docs/
        # multi-turn.md, Cost): the student one row per conversation, the teacher along one KV cache (only
        # outside sharding engines, which gather parameters inside the wrapped forward, and where a cache can be
        # cut back).
        self.by_conversation = config.multi_turn.enabled and config.multi_turn.by_conversation
        self.walks_teacher = self.by_conversation and not workers.sharded and can_walk(teacher_model or model)
        self.bake_step = BakingStep(model, config, teacher_model, prefix)
        # Under FSDP the prepared optimiser holds the sharded parameters that replace these.
        self.step_module, self.optimizer = workers.prepare(self.bake_step, optimizer)
        self._prefix_cache: dict[tuple, list[int]] = {}
        self._replayed_prompts: dict[str, BakePrompt] = {}
        # (context, answer ids, teacher prompt) -> teacher top-k (log-probs, token ids) at its answer positions; see cache_teacher.
        self._teacher_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.weight_copies = FrozenWeightCopies([model, teacher_model], config.autocast_dtype) \
            if _uses_weight_copy(config, model.device, workers) else None

    def prefix(self, trajectory: Trajectory, with_prompt: bool) -> list[int]:
        """Token ids of a trajectory's context: the bake's prompt (or a replayed answer's `teacher_prompt`), the
        conversation so far (multi-turn) and the question for the teacher; the same without the prompt for the
        student."""
        teacher_prompt = trajectory.teacher_prompt if with_prompt else None
        key = (trajectory.context_key, (teacher_prompt or "") if with_prompt else None)
        if key not in self._prefix_cache:
            prompt = self.prompt
            if teacher_prompt is not None:
                if teacher_prompt not in self._replayed_prompts:
                    self._replayed_prompts[teacher_prompt] = BakePrompt.from_setting(
                        teacher_prompt, self.config.prompt_format, self.tokenizer)
                prompt = self._replayed_prompts[teacher_prompt]
            context = prompt.context(self.tokenizer, trajectory.question, prompted=with_prompt,
                                     history=trajectory.history)
            self._prefix_cache[key] = encode_like_lm_eval(self.tokenizer, context)
        return self._prefix_cache[key]

    def _paired(self, trajectories: list[Trajectory]):
        return paired_batch(
            [self.prefix(t, True) for t in trajectories],
            [self.prefix(t, False) for t in trajectories],
            [t.answer_ids for t in trajectories],
            self.tokenizer.pad_token_id,
        )

    def student_inputs(self, trajectories: list[Trajectory]) -> tuple:
        """(ids, mask, answer positions) of the student's rows: by conversation, one row per conversation (a
        turn whose context and answer are not the start of a later turn's context is its own row:
        batching.packed_rows); else one row per trajectory."""
        prefixes, answers = [self.prefix(t, False) for t in trajectories], [t.answer_ids for t in trajectories]
        if self.by_conversation:
            rows = packed_rows(prefixes, answers, self.tokenizer.pad_token_id)
            return rows.ids, rows.mask, rows.positions
        batch = paired_batch(prefixes, prefixes, answers, self.tokenizer.pad_token_id)
        return batch.student_ids, batch.student_mask, batch.student_positions

    def teacher_inputs(self, trajectories: list[Trajectory]) -> dict:
        """The teacher for `step_module`: its logits along the conversations' shared histories (walks_teacher),
        else the paired batch's teacher side, which the step module reads itself."""
        if self.walks_teacher:
            sequences = [self.prefix(t, True) + t.answer_ids for t in trajectories]
            return {"teacher_logits": self.bake_step.teacher_logits_along_conversations(
                sequences, [len(t.answer_ids) for t in trajectories])}
        batch = self._paired(trajectories)
        return {"teacher_ids": batch.teacher_ids, "teacher_mask": batch.teacher_mask,
                "teacher_positions": batch.teacher_positions}

    def compute_loss(self, trajectories: list[Trajectory], n_tokens: int | None = None) -> torch.Tensor:
        """Forward KL(teacher ‖ student) summed over answer tokens, divided by `n_tokens` (default: their count).

        A data-parallel process passes the token count of the whole global
        batch, so the processes' losses add up to the loss of that batch.
        """
        n_tokens = n_tokens or sum(len(t.answer_ids) for t in trajectories)
        student = self.student_inputs(trajectories)
        lent = self.weight_copies.lent() if self.weight_copies is not None else contextlib.nullcontext()
        with lent, autocast(self.model.device, self.config.autocast_dtype):
            if self.config.cache_teacher:
                top_logp, top_index = self.teacher(trajectories)
                total = self.step_module(*student, teacher_top_logp=top_logp, teacher_top_index=top_index)
            else:
                total = self.step_module(*student, **self.teacher_inputs(trajectories))
        return total / n_tokens

    def teacher(self, trajectories: list[Trajectory]) -> tuple[torch.Tensor, torch.Tensor]:
        """With cache_teacher: the teacher's (top-k log-probs, token ids) at the batch's answer positions,
        computed (through the training module) only for trajectories not seen in an earlier step."""
        keys = [(t.context_key, tuple(t.answer_ids), t.teacher_prompt) for t in trajectories]
        for key, t in zip(keys, trajectories):
            # Top-k captured while sampling from the prompted base (sample_trajectories(capture_top_k=...)).
            if key not in self._teacher_cache and t.teacher_top_k is not None \
                    and t.teacher_top_k[0].shape[-1] == self.config.top_k:
                self._teacher_cache[key] = tuple(part.to(self.model.device) for part in t.teacher_top_k)
        missing = list({k: t for k, t in zip(keys, trajectories) if k not in self._teacher_cache}.items())
        if missing:
            todo = [t for _, t in missing]
            if self.walks_teacher:
                with torch.no_grad():
                    values, index = teacher_topk(self.teacher_inputs(todo)["teacher_logits"], self.config.top_k)
            else:
                batch = self._paired(todo)
                values, index = self.step_module(batch.student_ids, batch.student_mask, batch.student_positions,
                                                 batch.teacher_ids, batch.teacher_mask, batch.teacher_positions,
                                                 teacher_top_k=self.config.top_k)
            lengths = [len(t.answer_ids) for _, t in missing]
            for (key, _), v, i in zip(missing, values.split(lengths), index.split(lengths)):
                self._teacher_cache[key] = (v, i)
        return (torch.cat([self._teacher_cache[k][0] for k in keys]),
                torch.cat([self._teacher_cache[k][1] for k in keys]))

    def batches(self, trajectories: list[Trajectory], epoch: int) -> list[list[Trajectory]]:
        """The epoch's global batches: a seeded shuffle, optionally grouped by length (length_bucketing).

        By conversation, what is shuffled is the conversations (each its turns in order) and the single
        answers; the batches are then cut from that order every `batch_size` answers as always (the steps of
        an epoch do not change), so a conversation of as many trained turns as the batch size is one step.
        """
        units = self.training_units(trajectories)
        rng = random.Random(self.config.seed * 1000 + epoch)
        rng.shuffle(units)
        if self.config.length_bucketing:
            # A stable sort of the shuffled order: equal lengths stay in random order.
            units.sort(key=lambda unit: max(len(self.prefix(t, False)) + len(t.answer_ids) for t in unit))
        order = [t for unit in units for t in unit]
        size = self.config.batch_size
        batches = [order[i:i + size] for i in range(0, len(order), size)]
        if self.config.length_bucketing:
            rng.shuffle(batches)  # so the steps don't run from short to long
        return batches

    def training_units(self, trajectories: list[Trajectory]) -> list[list[Trajectory]]:
        """What an epoch shuffles: by conversation, each conversation's turns (by depth, where its first
        appears) and each other answer alone; else each answer alone (one of one: the same shuffle as ever)."""
        if not self.by_conversation:
            return [[t] for t in trajectories]
        units: list[list[Trajectory]] = []
        conversations: dict[int, list[Trajectory]] = {}
        for t in trajectories:
            if t.conversation is None:
                units.append([t])
            elif t.conversation not in conversations:
                conversations[t.conversation] = [t]
                units.append(conversations[t.conversation])
            else:
                conversations[t.conversation].append(t)
        for turns in conversations.values():
            turns.sort(key=lambda t: t.depth)
        return units

    def train_epoch(self, trajectories: list[Trajectory], epoch: int, *, start: int = 0,
                    losses: list[float] | None = None,
                    after_step: Callable[[int, list[float]], None] | None = None) -> float:
        """One pass over `trajectories` in a seeded random order; returns the mean loss.

        Every process forms the same global batches and trains on its share of
        each; accelerate's engine (DDP & co.) averages the gradients over the
        processes, so every process takes the same optimiser step.

        A resumed bake passes `start` (steps of this epoch already taken; the
        order is seeded, so the remaining batches are the same) and their
        `losses`. `after_step(step, losses)` runs after every optimiser step:
        that is where checkpoints are written and mid-epoch held-out KL measured.
        """
        self.model.train()
        losses = list(losses or [])
        batches = self.batches(trajectories, epoch)
        show = self.progress and self.workers.is_main
        bar = tqdm(batches[start:], desc=f"epoch {epoch}/{self.config.epochs}", unit="step",
                   disable=not show, initial=start, total=len(batches))
        for step, batch in enumerate(bar, start + 1):
            loss = self._step(batch)
            if not math.isfinite(loss):
                raise LossDiverged(
                    f"the loss became {loss} at epoch {epoch} step {step}; lower --learning-rate "
                    f"(now {self.config.learning_rate}) or use --precision fp32"
                )
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss)
            bar.set_postfix(kl=f"{loss:.4f}")
            if after_step is not None:
                after_step(step, losses)
                self.model.train()  # a held-out KL measured there leaves the model in eval mode
        bar.close()
        self.model.eval()
        return sum(losses) / len(losses)

    def _step(self, batch: list[Trajectory]) -> float:
        """Forward and backward of this process's share of one global batch; returns the whole batch's loss."""
        n_tokens = sum(len(t.answer_ids) for t in batch)
        mine = self.workers.shard(batch)
        if not self.workers.distributed:
            loss = self.compute_loss(mine, n_tokens=n_tokens)
            loss.backward()
            return loss.item()
        # A last batch smaller than the number of processes leaves some with nothing: they still run one
        # answer at weight 0, because every process must join the engine's gradient collective.
        loss = self.compute_loss(mine, n_tokens=n_tokens) if mine else 0.0 * self.compute_loss(batch[:1])
        # DDP, FSDP and ZeRO average gradients over the processes; each loss is this process's share of
        # the batch's sum, so scaling by the process count makes the average that sum's gradient.
        self.workers.backward(loss * self.workers.world)
        return self.workers.sum(loss.item())

    def heldout_kl(self, heldout: list[Trajectory], *, student_is_base: bool = False) -> KLEstimate:
        with self.workers.full_params(self.step_module):
            return self._heldout_kl(heldout, student_is_base)

    def _heldout_kl(self, heldout: list[Trajectory], student_is_base: bool) -> KLEstimate:
        return token_level_kl(
            self.model, self.tokenizer, heldout, self.prompt,
            student_is_base=student_is_base, top_k=None, batch_size=self.config.batch_size * 2,
            autocast_dtype=None, progress=self.progress,  # fp32: these are the reported numbers
            desc="held-out KL (base)" if student_is_base else "held-out KL", workers=self.workers,
            teacher_model=self.teacher_model,
        )


def _uses_weight_copy(config: BakeConfig, device: torch.device, workers: Workers) -> bool:
    """Whether the training step reads bf16 copies of the frozen weights (BakeConfig.bf16_weight_copy).

    Only where autocast would cast them (bf16 precision; fp32 weights are checked per module), and not under
    `accelerate launch`, whose engines own the parameters (FSDP and ZeRO shard and gather them).
    """
    if config.precision != "bf16" or config.bf16_weight_copy == "off" or workers.distributed:
        return False
    return config.bf16_weight_copy == "on" or device.type == "cpu"


def attach_lora(model, config: BakeConfig):
    """Wrap `model` in a fresh, seeded LoRA adapter on `config.target_modules` (keywords resolved here).

    LoRA weights are fp32 even on a bf16/fp16/4-bit base (PEFT's
    autocast_adapter_dtype), so the trained parameters and their optimiser
    state keep full precision.
    """
    from peft import LoraConfig, get_peft_model

    targets = resolve_targets(model, list(config.target_modules))
    # GPT-2's Conv1D stores its weight transposed; saying so in the adapter's config (PEFT would only warn and
    # flip it on the layer) keeps adapter_config.json true for whoever reads the factors (chain export).
    modules = dict(model.named_modules())
    conv1d = any(type(modules[name]).__name__ == "Conv1D" for name in targets.modules)
    torch.manual_seed(config.seed)
    lora = LoraConfig(
        r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=targets.target_modules, task_type="CAUSAL_LM", fan_in_fan_out=conv1d,
    )
    return get_peft_model(model, lora, autocast_adapter_dtype=True)
