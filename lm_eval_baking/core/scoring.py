"""Log-probs of continuations, computed exactly the way lm_eval scores them.

The held-out trajectories of a bake carry the teacher's and the unprompted
base's log-prob of each answer; `baking_mckl` then compares the model under
test against those numbers inside lm_eval.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .batching import answer_logits, pad
from .chat import lm_eval_encode_pair
from .parallel import SINGLE, Workers
from .prefix_cache import SharedPrefix
from .prompts import as_bake_prompt
from .sampling import Trajectory


@torch.no_grad()
def continuation_logprobs(model, tokenizer, pairs: list[tuple[str, str]], *, batch_size: int = 16,
                          desc: str = "scoring", progress: bool = True,
                          prefix: SharedPrefix | None | str = "own") -> list[tuple[float, int]]:
    """(sum log-prob, token count) of each continuation given its context, lm_eval-style.

    The tokens all contexts share (a system prompt, a few-shot prefix) are read once (core.prefix_cache):
    `prefix`, by default ("own") what these contexts share; None reads every context whole."""
    encoded = [lm_eval_encode_pair(tokenizer, ctx, cont) for ctx, cont in pairs]
    if prefix == "own":
        prefix = SharedPrefix.of([ctx for ctx, _ in encoded])
    results = []
    for start in tqdm(range(0, len(encoded), batch_size), desc=desc, disable=not progress, leave=False):
        chunk = encoded[start:start + batch_size]
        input_ids, attention_mask = pad([ctx + cont for ctx, cont in chunk], tokenizer.pad_token_id)
        positions = torch.zeros_like(input_ids, dtype=torch.bool)
        for row, (ctx, cont) in enumerate(chunk):
            positions[row, len(ctx) - 1:len(ctx) + len(cont) - 1] = True
        logprobs = torch.log_softmax(answer_logits(model, input_ids, attention_mask, positions, prefix).float(), dim=-1)
        targets = torch.tensor([token for _, cont in chunk for token in cont], device=logprobs.device)
        token_logprobs = logprobs.gather(-1, targets[:, None]).squeeze(-1).cpu()
        for chunk_logprobs in token_logprobs.split([len(cont) for _, cont in chunk]):
            results.append((chunk_logprobs.sum().item(), len(chunk_logprobs)))
    return results


def shared_prefix(tokenizer, pairs: list[tuple[str, str]]) -> SharedPrefix | None:
    """What the contexts of (context, continuation) pairs share, tokenised as lm_eval does."""
    return SharedPrefix.of([lm_eval_encode_pair(tokenizer, ctx, cont)[0] for ctx, cont in pairs])


def score_heldout(model, tokenizer, trajectories: list[Trajectory], system_prompt, *,
                  batch_size: int = 16, progress: bool = True, workers: Workers = SINGLE) -> None:
    """Fill teacher_logprob / base_logprob / n_tokens in place (model = the unbaked base).

    `system_prompt` is anything `prompts.as_bake_prompt` takes; the base log-prob is of the same
    context without it. Under `accelerate launch` each process scores its share and all receive every score.
    """
    prompt = as_bake_prompt(system_prompt, tokenizer)
    prompted = [(prompt.context(tokenizer, t.question), t.answer) for t in trajectories]
    plain = [(prompt.context(tokenizer, t.question, prompted=False), t.answer) for t in trajectories]
    progress = progress and workers.is_main

    def scores(pairs, desc):
        # One split for all pairs, so every process of a launch reads its shard as one process would.
        prefix = None if workers.sharded else shared_prefix(tokenizer, pairs)
        return workers.map(lambda shard: continuation_logprobs(model, tokenizer, shard, batch_size=batch_size,
                                                               desc=desc, progress=progress, prefix=prefix), pairs)

    teacher = scores(prompted, "teacher log-probs")
    base = scores(plain, "base log-probs")
    for t, (t_lp, n), (b_lp, _) in zip(trajectories, teacher, base):
        t.teacher_logprob, t.base_logprob, t.n_tokens = t_lp, b_lp, n
