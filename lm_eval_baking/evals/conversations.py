"""Simulated conversations: an agent with a persona chats with a simulated user (Li et al. 2024).

The agent is the model with the persona's system prompt; the simulated user is
the same model with a user-simulator prompt that names a new everyday topic
each turn, reading the history with the roles swapped. Many conversations are
generated in lockstep: one left-padded batch per turn and side.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..core.batching import autocast, pad
from ..core.chat import encode_like_lm_eval
from ..core.models import model_context_length
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
    """
    ids = conversation_ids or [0] * len(system_prompts)
    histories = [[{"role": "user", "content": settings.opener_of(k)}] for k in ids]
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(settings.seed)
    try:
        with autocast(model.device, autocast_dtype):
            for turn in tqdm(range(1, settings.turns + 1), desc="conversation turns", unit="turn", disable=not progress):
                agent_views = [[_system(prompt)] + history for prompt, history in zip(system_prompts, histories)]
                for history, reply in zip(histories, generate_replies(model, tokenizer, agent_views, settings)):
                    history.append({"role": "assistant", "content": reply})
                if turn == settings.turns:
                    break
                user_views = [[_system(settings.user_system_prompt(turn, k))] + swap_roles(history)
                              for k, history in zip(ids, histories)]
                for history, reply in zip(histories, generate_replies(model, tokenizer, user_views, settings)):
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


@torch.no_grad()
def generate_replies(model, tokenizer, conversations: list[list[dict]], settings: ConversationSettings) -> list[str]:
    """The next assistant message of each conversation, generated as one left-padded batch."""
    prompts = [
        encode_like_lm_eval(tokenizer, tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True))
        for c in conversations
    ]
    input_ids, attention_mask = pad(prompts, tokenizer.pad_token_id, left=True)
    stop_ids = eos_ids(tokenizer, model)
    sampling = (dict(do_sample=True, temperature=settings.temperature, top_k=0, top_p=1.0)
                if settings.temperature > 0 else dict(do_sample=False))
    output = model.generate(
        input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
        max_new_tokens=settings.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=sorted(stop_ids), **sampling,
    )
    return [
        tokenizer.decode(cut_at_eos(row[input_ids.shape[1]:].tolist(), stop_ids), skip_special_tokens=True).strip()
        for row in output
    ]


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
