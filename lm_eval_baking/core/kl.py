"""KL divergences between the prompted teacher and the unprompted student, and their estimates.

Everything here works on "answer positions": the logits that predict answer
tokens (see `batching.paired_batch`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .batching import answer_logits, autocast, paired_batch, teacher_mode
from .chat import encode_like_lm_eval
from .parallel import SINGLE, Workers
from .prefix_cache import SharedPrefix
from .prompts import as_bake_prompt


def forward_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    """KL(teacher ‖ student) per position, shape [N], from [N, V] logits.

    With `top_k`, the teacher keeps its k most likely tokens and one bucket for
    the remaining mass, and the student is compared on the same k+1 outcomes;
    this is what an API that returns only top-k log-probs allows, and it lower
    bounds the full KL.
    """
    teacher_logp = torch.log_softmax(teacher_logits.float(), dim=-1)
    student_logp = torch.log_softmax(student_logits.float(), dim=-1)
    if top_k is None:
        return (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)
    return topk_kl(*teacher_logp.topk(top_k, dim=-1), student_logp)


def teacher_topk(teacher_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's k largest log-probs (fp32) and their token ids, [N, k] each: what a cache keeps."""
    return torch.log_softmax(teacher_logits.float(), dim=-1).topk(k, dim=-1)


def topk_kl(top_teacher: torch.Tensor, index: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """KL over the k+1 outcomes "one of the teacher's top-k tokens" and "anything else", per position.

    `top_teacher` [N, k] are teacher log-probs of tokens `index`; `student_logp`
    [N, V] are full student log-probs. This needs nothing else from the teacher,
    which is why top-k teacher log-probs can be cached.
    """
    top_student = student_logp.gather(-1, index)
    rest_teacher = _log1mexp(torch.logsumexp(top_teacher, dim=-1))
    rest_student = _log1mexp(torch.logsumexp(top_student, dim=-1))
    kl_top = (top_teacher.exp() * (top_teacher - top_student)).sum(-1)
    return kl_top + rest_teacher.exp() * (rest_teacher - rest_student)


def chunked_kl_sum(head, student_states: torch.Tensor, teacher, chunk_size: int,
                   top_k: int | None = None) -> torch.Tensor:
    """Sum over positions of KL(teacher ‖ head(student_states)), `chunk_size` positions at a time.

    The [N, V] student logits and their fp32 log-softmax are the largest
    tensors of a training step (N answer tokens x V vocabulary; 128k-token
    vocabularies make them gigabytes). Here each chunk's head matmul and KL run
    under activation checkpointing, so only one chunk's [chunk, V] tensors live
    at a time; backward recomputes them chunk by chunk.

    `teacher` is either [N, V] teacher logits, or a (top log-probs, index) pair
    of [N, k] tensors from `teacher_topk` (then the top-k bucket KL is used).
    """
    from torch.utils.checkpoint import checkpoint

    def chunk_kl(states, *teacher_chunk):
        if len(teacher_chunk) == 2:
            return topk_kl(*teacher_chunk, torch.log_softmax(head(states).float(), dim=-1)).sum()
        return forward_kl(teacher_chunk[0], head(states), top_k).sum()

    total = student_states.new_zeros((), dtype=torch.float32)
    for start in range(0, student_states.shape[0], chunk_size):
        part = slice(start, start + chunk_size)
        teacher_chunk = tuple(t[part] for t in teacher) if isinstance(teacher, tuple) else (teacher[part],)
        total = total + checkpoint(chunk_kl, student_states[part], *teacher_chunk, use_reentrant=False)
    return total


def _log1mexp(log_p: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(log_p)), stable near 0 and clamped so an empty bucket stays finite."""
    log_p = log_p.clamp(max=-1e-7)
    return torch.where(log_p > -math.log(2), torch.log(-torch.expm1(log_p)), torch.log1p(-torch.exp(log_p)))


@torch.no_grad()
def token_level_kl(model, tokenizer, trajectories, system_prompt, *, student_has_prompt: bool = False,
                   student_is_base: bool = False, top_k: int | None = None, batch_size: int = 16,
                   autocast_dtype: torch.dtype | None = None, progress: bool = True,
                   desc: str = "held-out KL", workers: Workers | None = None,
                   teacher_model=None) -> KLEstimate:
    """Exact full-vocabulary KL(prompted base ‖ model) summed along each trajectory.

    The teacher is `model` with its adapter off and `system_prompt` in context;
    the student is `model` as it is (or its base, with `student_is_base`),
    without the prompt unless `student_has_prompt`. Lower variance than the
    Monte-Carlo estimate because it sums over the whole vocabulary at every
    position instead of using only the sampled token.

    `teacher_model`, when given, is the prompted teacher instead of `model`
    with its adapter off (a stage whose target is another model than the one
    it starts from); `student_is_base` then still means `model`'s adapter off.

    `workers` (from `parallel.current()`) shares the trajectories out over
    `accelerate launch` processes; every process gets the same estimate.
    """
    workers = workers or SINGLE
    prompt = as_bake_prompt(system_prompt, tokenizer)

    def prefixes(sequences, prompted: bool):
        return [encode_like_lm_eval(tokenizer, prompt.context(tokenizer, t.question, prompted=prompted,
                                                                   history=t.history))
                for t in sequences]

    # What all contexts share is read once (core.prefix_cache), the same split in every process whatever its
    # shard; the student from a cache of its own, since its weights are not the teacher's. Sharded engines
    # gather parameters per forward: not tried there.
    prefix = None if workers.sharded else SharedPrefix.of(prefixes(trajectories, True))
    student_prefix = None if workers.sharded else SharedPrefix.of(prefixes(trajectories, student_has_prompt))

    def sequence_kls(shard) -> list[tuple[float, int]]:
        teacher_prefixes = prefixes(shard, True)
        student_prefixes = prefixes(shard, student_has_prompt)
        out = []
        bar = tqdm(range(0, len(shard), batch_size), desc=desc, disable=not progress or not workers.is_main, leave=False)
        for start in bar:
            stop = start + batch_size
            answers = [t.answer_ids for t in shard[start:stop]]
            batch = paired_batch(teacher_prefixes[start:stop], student_prefixes[start:stop], answers,
                                 tokenizer.pad_token_id)
            with autocast(model.device, autocast_dtype):
                if teacher_model is not None:
                    teacher = answer_logits(teacher_model, batch.teacher_ids, batch.teacher_mask,
                                            batch.teacher_positions, prefix)
                else:
                    with teacher_mode(model):
                        teacher = answer_logits(model, batch.teacher_ids, batch.teacher_mask,
                                                batch.teacher_positions, prefix)
                with teacher_mode(model) if student_is_base else contextlib.nullcontext():
                    student = answer_logits(model, batch.student_ids, batch.student_mask, batch.student_positions,
                                            student_prefix)
            per_position = forward_kl(teacher, student, top_k).cpu()
            out.extend((chunk.sum().item(), len(chunk)) for chunk in per_position.split([len(a) for a in answers]))
        return out

    per_sequence = workers.map(sequence_kls, trajectories)
    return KLEstimate.from_sequences([s for s, _ in per_sequence], [n for _, n in per_sequence])


@dataclass
class KLEstimate:
    """Mean KL per sequence and per answer token, each with its standard error over sequences.

    Per-token KL is the mean over sequences of (sequence KL / its token count),
    the same statistic lm_eval's `mean` aggregation gives for per-doc values,
    so the two can be compared with their stderr.
    """

    per_token: float
    per_token_stderr: float
    """NaN with fewer than 2 sequences: one answer has no spread to estimate from."""
    per_sequence: float
    per_sequence_stderr: float
    n_sequences: int
    n_tokens: int

    @classmethod
    def from_sequences(cls, sums: list[float], counts: list[int]) -> "KLEstimate":
        rates = [s / c for s, c in zip(sums, counts)]
        return cls(
            per_token=_mean(rates),
            per_token_stderr=_stderr(rates),
            per_sequence=_mean(sums),
            per_sequence_stderr=_stderr(sums),
            n_sequences=len(sums),
            n_tokens=sum(counts),
        )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _stderr(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return float("nan")
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def monte_carlo_kl(teacher_logprobs: list[float], model_logprobs: list[float], n_tokens: list[int]) -> KLEstimate:
    """Paper Eq. 3: mean over teacher samples y_i of log P_teacher(y_i) - log P_model(y_i)."""
    diffs = [t - m for t, m in zip(teacher_logprobs, model_logprobs)]
    return KLEstimate.from_sequences(diffs, n_tokens)
