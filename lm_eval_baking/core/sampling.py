"""Trajectories: answers sampled from the prompted model.

A trajectory is (prompt u, question x, answer y) with y ~ P_θ(·|u, x).
Training needs the exact sampled token ids; validation through lm_eval needs
the answer *text* and log-probs computed the way lm_eval scores a
continuation (`scoring.py`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from .batching import pad
from .chat import encode_like_lm_eval
from .kl import teacher_topk
from .kv_batch import CachedBatch
from .parallel import SINGLE, Workers
from .prefix_cache import SharedPrefix
from .prompts import as_bake_prompt
from .questions import Question


@dataclass
class Trajectory:
    question: str
    answer: str
    answer_ids: list[int]
    category: str = "user"
    temperature: float = 1.0
    # Held-out only: lm_eval-convention log-probs of `answer` after the chat
    # prefix, with the system prompt (teacher) and without it (unprompted base).
    teacher_logprob: float | None = None
    base_logprob: float | None = None
    n_tokens: int | None = None
    # Training only, for replayed answers of an earlier prompt (compose mode `replay`): the system prompt
    # the teacher reads for this answer instead of the bake's own. None (and not saved) for the bake's own.
    teacher_prompt: str | None = None
    # Multi-turn bakes only: the conversation before `question` (user/assistant messages, no system prompt),
    # and which agent turn `answer` is (1: the reply to the opener). None (and not saved) for a single question.
    history: list[dict] | None = None
    depth: int | None = None
    # Multi-turn bakes only: which of the bake's conversations this turn is from (turns of one conversation train
    # in the same step, the conversation read once: PromptBaker.batches).
    conversation: int | None = None
    # In memory only, never saved: the sampling model's top-k log-probs and token ids ([n, k] each) at
    # every answer position, when sampled with `capture_top_k`. The trainer's teacher cache starts from them.
    teacher_top_k: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        saved = (f.name for f in fields(self) if f.name != "teacher_top_k")
        return {name: getattr(self, name) for name in saved if getattr(self, name) is not None}

    @property
    def context_key(self) -> tuple:
        """What decides this trajectory's context besides the prompt: its question and the conversation before it."""
        history = tuple((m["role"], m["content"]) for m in self.history) if self.history else None
        return self.question, history

    @classmethod
    def from_dict(cls, row: dict) -> "Trajectory":
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in row.items() if k in fields})


@torch.no_grad()
def sample_trajectories(
    model,
    tokenizer,
    questions: list[Question],
    *,
    system_prompt,
    samples_per_question: int = 1,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    batch_size: int = 32,
    seed: int = 0,
    desc: str = "sampling",
    progress: bool = True,
    workers: Workers = SINGLE,
    capture_top_k: int | None = None,
) -> list[Trajectory]:
    """Sample answers from `model` prompted with `system_prompt` (temperature 0 = greedy).

    `system_prompt` is a BakePrompt (core.prompts), a string (a system message, or a text prefix for a
    model without a chat template), a list of chat messages, or None (no prompt).

    Pure ancestral sampling at `temperature` (no top-k/top-p), so the samples
    follow P_θ(·|u, x)^(1/T) exactly. Prompts are grouped by length to keep
    left padding short; the KV cache makes each new token one small forward.
    The tokens every context shares (template and prompt) are read once per
    call and each batch continues from a copy of their cache (core.kv_batch,
    core.prefix_cache): the same ancestral steps as generate(), whose
    numerics differ by rounding only.

    Each batch draws from its own seeded stream (from `seed` and the batch's
    index), so under `accelerate launch` the processes can share the batches
    out and still produce exactly the answers one process would.

    With `capture_top_k`, each trajectory also keeps the model's `capture_top_k`
    largest log-probs at every answer position, before temperature: when the
    sampling model is the prompted base, that is the teacher a top-k cached
    bake needs, so its first epoch skips the teacher forward pass.
    """
    jobs = [(q, k) for q in questions for k in range(samples_per_question)]
    prompt = as_bake_prompt(system_prompt, tokenizer)
    prefixes = {q.text: encode_like_lm_eval(tokenizer, prompt.context(tokenizer, q.text)) for q in questions}
    order = sorted(range(len(jobs)), key=lambda i: len(prefixes[jobs[i][0].text]))
    batches = list(enumerate(order[start:start + batch_size] for start in range(0, len(order), batch_size)))
    results: list[Trajectory | None] = [None] * len(jobs)
    generator_state = torch.random.get_rng_state()
    stop_ids = eos_ids(tokenizer, model)
    # The prompt's tokens are read once and each batch continues from a copy of their cache (core.prefix_cache).
    shared = None if workers.sharded else SharedPrefix.of(list(prefixes.values()))
    mine = workers.shard(batches)
    bar = tqdm(total=sum(len(b) for _, b in mine), desc=desc, unit="answer", disable=not progress or not workers.is_main)
    try:
        for batch_index, batch in mine:
            torch.manual_seed(batch_seed(seed, batch_index))
            contexts = [prefixes[jobs[i][0].text] for i in batch]
            recorder = _TopKRecorder(capture_top_k) if capture_top_k else None
            if shared is not None and all(c[:len(shared)] == shared.tokens and len(c) > len(shared) for c in contexts):
                rows = CachedBatch.after(model, tokenizer.pad_token_id, len(batch), shared)
                rows.extend([c[len(shared):] for c in contexts])
                answers = rows.generate(max_new_tokens, temperature, stop_ids,
                                        on_logits=(lambda logits: recorder(None, logits)) if recorder else None)
            else:
                answers = _generate(model, tokenizer, contexts, max_new_tokens, temperature, stop_ids, recorder)
            for row, job_index in enumerate(batch):
                answer_ids = cut_at_eos(answers[row], stop_ids)
                question = jobs[job_index][0]
                results[job_index] = Trajectory(
                    question=question.text,
                    category=question.category,
                    answer=tokenizer.decode(answer_ids, skip_special_tokens=True),
                    answer_ids=answer_ids,
                    temperature=temperature,
                    teacher_top_k=recorder.row(row, len(answer_ids)) if recorder else None,
                )
            bar.update(len(batch))
    finally:
        bar.close()
        torch.random.set_rng_state(generator_state)
    if workers.distributed:
        for piece in workers.gather([(i, t) for i, t in enumerate(results) if t is not None]):
            for job_index, trajectory in piece:
                results[job_index] = trajectory
    return results  # type: ignore[return-value]


def _generate(model, tokenizer, contexts: list[list[int]], max_new_tokens: int, temperature: float,
              stop_ids: set[int], recorder: "_TopKRecorder | None") -> list[list[int]]:
    """Each context's continuation by one generate() call over the left-padded batch (the prompt read per row)."""
    input_ids, attention_mask = pad(contexts, tokenizer.pad_token_id, left=True)
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else dict(do_sample=False)
    output = model.generate(
        input_ids=input_ids.to(model.device),
        attention_mask=attention_mask.to(model.device),
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=sorted(stop_ids),
        logits_processor=LogitsProcessorList([recorder] if recorder else []),
        **sampling,
    )
    return [row[input_ids.shape[1]:].tolist() for row in output]


class _TopKRecorder(LogitsProcessor):
    """Keeps the top-k log-probs of every generation step, leaving the scores unchanged.

    generate() runs custom processors before its temperature warper, so these
    are the model's own log-probs, whatever the sampling temperature.
    """

    def __init__(self, k: int):
        self.k = k
        self.steps: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        values, index = teacher_topk(scores, self.k)
        self.steps.append((values.cpu(), index.cpu()))
        return scores

    def row(self, row: int, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[n_tokens, k] log-probs and token ids of one batch row's first `n_tokens` answer positions."""
        return (torch.stack([values[row] for values, _ in self.steps[:n_tokens]]),
                torch.stack([index[row] for _, index in self.steps[:n_tokens]]))


def batch_seed(seed: int, batch_index: int) -> int:
    """The seed of batch `batch_index` in a run seeded `seed`.

    The first batch uses `seed` itself (so a run that fits one batch samples
    what it always did); later ones a hash of both, since seed + i would
    collide with the next seed's batches.
    """
    if batch_index == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}/{batch_index}".encode()).digest()[:7], "little")


def eos_ids(tokenizer, model) -> set[int]:
    """Every id that ends an answer: the tokenizer's EOS and the model's generation config's."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}


def cut_at_eos(ids: list[int], stop_ids: set[int]) -> list[int]:
    """Generated ids up to and including the first end-of-sequence token."""
    for position, token in enumerate(ids):
        if token in stop_ids:
            return ids[:position + 1]  # keep the EOS: when to stop is part of the behaviour
    return ids
