"""Simulated conversations for persona drift: the generator lives in core.conversations (multi-turn baking uses
it too); what is drift's own, the check that the probe contexts fit the model, is here.
"""

from __future__ import annotations

from ..core.chat import encode_like_lm_eval
from ..core.conversations import (  # noqa: F401 (drift's names for them)
    ConversationSettings, generate_conversations, swap_roles, user_window,
)
from ..core.conversations import system_message
from ..core.models import model_context_length
from ..errors import BakingError


def check_context(model, tokenizer, system_prompts: list[str], probes: list[str],
                  settings: ConversationSettings) -> None:
    """Refuse before generating when the longest probe context cannot fit the model."""
    limit = model_context_length(model)
    filler = "x " * settings.max_new_tokens  # about one token per "x "
    turn = [{"role": "user", "content": filler}, {"role": "assistant", "content": filler}]
    longest_probe = max(probes, key=len)
    for prompt in system_prompts:
        messages = [system_message(prompt)] + turn * settings.turns + [{"role": "user", "content": longest_probe}]
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        needed = len(encode_like_lm_eval(tokenizer, rendered)) + settings.max_new_tokens
        if needed > limit:
            raise BakingError(
                f"{settings.turns} turns of up to {settings.max_new_tokens} tokens need about {needed} tokens of "
                f"context, more than the model's {limit}; lower --turns or --max-new-tokens"
            )
