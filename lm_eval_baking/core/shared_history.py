"""A frozen model's answer logits for sequences that share long beginnings, each shared token read once.

A multi-turn bake's teacher reads, for every trained turn d of a conversation, the prompt, the conversation
up to turn d (with the prompt refreshed before its latest user message) and the reply. Read one by one, a
conversation of D turns of T tokens costs about D²T/2 tokens; but turn d's sequence shares with turn d+1's
everything up to where the refresh goes (or all of it, without refresh). `shared_history_logits` walks the
sequences in sorted order with one KV cache: before each sequence the cache is cut back to the tokens it
shares with the one before, and only the rest is read. Sorted, every group of sequences with a common
beginning is contiguous (a depth-first walk of their prefix tree), so every distinct prefix is read once:
about D x T tokens for a conversation, plus each turn's refreshed prompt, latest message and reply.

The cache is reused across forwards, so this is for frozen weights only (the bake's teacher), as
core.prefix_cache is. The numerics are those of a cached forward: not bit-identical to one forward over
the whole sequence, equal to about 1e-5 in fp32 (tests/training/test_conversation_cache.py).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from .batching import decoder_and_head
from .prefix_cache import SharedPrefix, cache_keyword


def can_walk(model) -> bool:
    """Whether a KV cache of `model` can be cut back to fewer tokens and extended again (not: sliding-window
    layers, which drop what they no longer attend to); where it cannot, each sequence is read whole."""
    return bool(DynamicCache(config=model.config).is_croppable)


def common_length(a: list[int], b: list[int]) -> int:
    """How many tokens `a` and `b` share from their start."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


@torch.no_grad()
def shared_history_logits(model, sequences: list[list[int]], answer_lengths: list[int],
                          prefix: SharedPrefix | None = None) -> torch.Tensor:
    """[N, V] logits at the answer positions of every sequence (the last `answer_lengths[i]` tokens of
    `sequences[i]` are its answer), sequence after sequence in the order given: as
    `batching.answer_logits` gives them for the same sequences as a paired batch's teacher side.

    `prefix` (core.prefix_cache), when a sequence starts with it, is taken from its cache, not read.
    """
    split = decoder_and_head(model)
    module = split[0] if split is not None else model
    keyword = cache_keyword(module)
    device = model.device
    found: list[torch.Tensor | None] = [None] * len(sequences)
    cache, held = None, []  # `cache` holds exactly the tokens `held`
    for index in sorted(range(len(sequences)), key=lambda i: sequences[i]):
        sequence, answer = sequences[index], answer_lengths[index]
        first = len(sequence) - answer - 1  # the position whose logits predict the first answer token
        keep = min(common_length(held, sequence), first)  # that position's logits must come from this forward
        if prefix is not None and keep < len(prefix) <= first and sequence[:len(prefix)] == prefix.tokens:
            cache, held = prefix.copied_cache(module, 1), list(prefix.tokens)
        elif keep == 0:
            cache, held = DynamicCache(config=model.config), []
        elif keep < len(held):
            cache.crop(keep - len(held))  # a negative count removes that many tokens
            held = held[:keep]
        new = torch.tensor([sequence[len(held):]], dtype=torch.long, device=device)
        output = module(input_ids=new, attention_mask=torch.ones((1, len(sequence)), dtype=torch.long, device=device),
                        position_ids=torch.arange(len(held), len(sequence), device=device)[None],
                        use_cache=True, **{keyword: cache})
        # The answer positions are the last `answer` that were read, but for the very last token's own.
        wanted = slice(first - len(held), len(sequence) - 1 - len(held))
        if split is not None:
            found[index] = split[1](output.last_hidden_state[0, wanted])
        else:
            found[index] = output.logits[0, wanted]
        held = list(sequence)
    return torch.cat(found)
