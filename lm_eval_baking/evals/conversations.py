"""Simulated conversations: an agent with a persona chats with a simulated user (Li et al. 2024).

The agent is the model with the persona's system prompt; the simulated user is
the same model with a user-simulator prompt that names a new everyday topic
each turn, reading the latest turns with the roles swapped. Many conversations
are generated in lockstep, one batch per side; the agents' KV cache is kept
from turn to turn.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..core.batching import autocast
from ..core.chat import encode_like_lm_eval
from ..core.kv_batch import CachedBatch
from ..core.models import model_context_length
from ..core.packed_weights import packed_linears
from ..core.sampling import cut_at_eos, eos_ids
from ..errors import BakingError
from .config import ConversationSettings


def generate_conversations(model, tokenizer, system_prompts: list[str], settings: ConversationSettings, *,
                           conversation_ids: list[int] | None = None, autocast_dtype=None,
                           progress: bool = True) -> list[list[dict]]:
    """One conversation per system prompt, all generated in lockstep.

    `conversation_ids[i]` picks the i-th conversation's opener and topics
    (default: 0 for all). Returns message lists [user, assistant, user, ...]
    with `settings.turns` assistant messages and no system message.

    The agents keep one KV cache across turns (core.kv_batch): each turn feeds
    only the messages added since their last reply, so a turn costs its new
    tokens, not the whole history. The simulated user's system prompt names a
    new topic every turn, which changes its view from the first tokens on, so
    its side has no cache to keep; it reads the last `settings.user_context_turns`
    agent turns (0: all of them, as the agent does).

    Decode steps of a few rows are weight traffic: under bf16 autocast on a CPU
    the frozen model's linear weights are packed once for the whole call
    (core.packed_weights) and the KV cache grows in place (core.kv_batch); both
    give the numbers the plain path gives.
    """
    ids = conversation_ids or [0] * len(system_prompts)
    histories = [[{"role": "user", "content": settings.opener_of(k)}] for k in ids]
    stop_ids = eos_ids(tokenizer, model)
    agents = CachedBatch(model, tokenizer.pad_token_id, len(system_prompts))
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(settings.seed)
    try:
        # Packed weights: the same numbers, faster few-row decode steps on a CPU (core.packed_weights).
        with autocast(model.device, autocast_dtype), packed_linears(model, autocast_dtype):
            for turn in tqdm(range(1, settings.turns + 1), desc="conversation turns", unit="turn", disable=not progress):
                agent_views = [[_system(prompt)] + history for prompt, history in zip(system_prompts, histories)]
                agents.sync([_encode_view(tokenizer, view) for view in agent_views])
                for history, reply in zip(histories, _replies(agents, tokenizer, settings, stop_ids)):
                    history.append({"role": "assistant", "content": reply})
                agents.rollback()  # the reply comes back as the next turn's text, tokenized as the template gives it
                if turn == settings.turns:
                    break
                user_views = [[_system(settings.user_system_prompt(turn, k))] + user_window(history, settings)
                              for k, history in zip(ids, histories)]
                users = CachedBatch(model, tokenizer.pad_token_id, len(user_views))
                users.extend([_encode_view(tokenizer, view) for view in user_views])
                for history, reply in zip(histories, _replies(users, tokenizer, settings, stop_ids)):
                    history.append({"role": "user", "content": reply})
    finally:
        torch.random.set_rng_state(rng_state)
    return histories


def _system(prompt: str) -> dict:
    return {"role": "system", "content": prompt}


def swap_roles(messages: list[dict]) -> list[dict]:
    """The simulated user's view: its own turns become the assistant's, the agent's the user's."""
    swapped = {"user": "assistant", "assistant": "user"}
    return [{"role": swapped[m["role"]], "content": m["content"]} for m in messages]


def user_window(history: list[dict], settings: ConversationSettings) -> list[dict]:
    """What the simulated user reads: the last `user_context_turns` agent messages and its own replies between
    them (all of the history for 0), roles swapped. It always opens with an agent message, shown as "user"."""
    turns = settings.user_context_turns
    return swap_roles(history[-(2 * turns - 1):] if turns else history)


def _encode_view(tokenizer, messages: list[dict]) -> list[int]:
    return encode_like_lm_eval(tokenizer, tokenizer.apply_chat_template(messages, tokenize=False,
                                                                        add_generation_prompt=True))


def _replies(batch: CachedBatch, tokenizer, settings: ConversationSettings, stop_ids: set[int]) -> list[str]:
    """The next message of every row of `batch`, as text."""
    answers = batch.generate(settings.max_new_tokens, settings.temperature, stop_ids)
    return [tokenizer.decode(cut_at_eos(ids, stop_ids), skip_special_tokens=True).strip() for ids in answers]


def check_context(model, tokenizer, system_prompts: list[str], probes: list[str],
                  settings: ConversationSettings) -> None:
    """Refuse before generating when the longest probe context cannot fit the model."""
    limit = model_context_length(model)
    filler = "x " * settings.max_new_tokens  # about one token per "x "
    turn = [{"role": "user", "content": filler}, {"role": "assistant", "content": filler}]
    longest_probe = max(probes, key=len)
    for prompt in system_prompts:
        messages = [_system(prompt)] + turn * settings.turns + [{"role": "user", "content": longest_probe}]
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        needed = len(encode_like_lm_eval(tokenizer, rendered)) + settings.max_new_tokens
        if needed > limit:
            raise BakingError(
                f"{settings.turns} turns of up to {settings.max_new_tokens} tokens need about {needed} tokens of "
                f"context, more than the model's {limit}; lower --turns or --max-new-tokens"
            )
