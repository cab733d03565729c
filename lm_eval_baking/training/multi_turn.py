"""Multi-turn baking: training examples from simulated conversations (docs/multi-turn.md).

    conversations of the prompted agent with a simulated user (core.conversations, one KV cache per batch
    of conversations kept from turn to turn) -> one trajectory per (conversation, agent turn in the depth
    range): question = that turn's user message, history = the conversation before it, answer = the
    agent's reply -> trained and measured like any other trajectory (PromptBaker, token_level_kl)

The student's context is the history and the question with no system prompt; the teacher's has the prompt
first and, with `refresh`, again next to the question (BakePrompt.context), so its target at depth is the
behaviour the prompt asks for, not the drifted one.
"""

from __future__ import annotations

import random
from dataclasses import asdict, replace

from ..core.batching import autocast
from ..core.conversations import ConversationSettings, generate_conversations
from ..core.prompts import BakePrompt
from ..core.sampling import Trajectory, batch_seed
from .config import BakeConfig

CATEGORY = "conversation"


def teacher_prompt(prompt: BakePrompt, config: BakeConfig) -> BakePrompt:
    """The bake's prompt as a multi-turn teacher reads it: refreshed next to the latest user message when asked
    (config.multi_turn.refresh_as, resolved by the plan to system or user)."""
    settings = config.multi_turn
    if not settings.enabled or not settings.refresh:
        return prompt
    return replace(prompt, refresh=settings.refresh_as)


def turn_trajectories(conversations: list[list[dict]], depths: range, tokenizer,
                      temperature: float) -> list[Trajectory]:
    """One trajectory per conversation and agent turn in `depths` (1: the reply to the opener), conversation by
    conversation. The answer is the reply's tokens and the end-of-turn token, as the chat template closes it
    when the reply is read back in the next turn's history."""
    end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    out = []
    for messages in conversations:
        for depth in depths:
            user, reply = messages[2 * depth - 2], messages[2 * depth - 1]
            out.append(Trajectory(
                question=user["content"], answer=reply["content"],
                answer_ids=tokenizer.encode(reply["content"], add_special_tokens=False) + end,
                category=CATEGORY, temperature=temperature, history=messages[:2 * depth - 2], depth=depth))
    return out


def sample_conversation_turns(sampler, tokenizer, config: BakeConfig, *, heldout: bool,
                              progress: bool) -> list[Trajectory]:
    """The training (or held-out) conversations of a multi-turn bake, as turn trajectories.

    The agent is `sampler` with the bake's prompt as its system message, which is how `drift-data` builds
    conversations. Held-out conversations are seeded apart (seed + 1, conversation ids after the training
    ones: other openers and topics) and sampled at temperature 1, so their KL estimates are unbiased for the
    plain prompted agent. Conversations run in lockstep batches of --generation-batch-size.
    """
    settings = config.multi_turn
    count = settings.heldout_conversations if heldout else settings.conversations
    first_id = settings.conversations if heldout else 0
    temperature = 1.0 if heldout else config.temperature
    seed = config.seed + 1 if heldout else config.seed
    size = config.generation_batch_size
    conversations: list[list[dict]] = []
    with autocast(sampler.device, config.autocast_dtype):
        for index, start in enumerate(range(0, count, size)):
            ids = list(range(first_id + start, first_id + min(start + size, count)))
            chat = ConversationSettings(turns=settings.max_depth, max_new_tokens=config.max_new_tokens,
                                        temperature=temperature, seed=batch_seed(seed, index),
                                        conversations=len(ids))
            conversations += generate_conversations(sampler, tokenizer, [config.prompt] * len(ids), chat,
                                                    conversation_ids=ids, progress=progress)
    return turn_trajectories(conversations, settings.depths, tokenizer, temperature)


def mix_single_turn(turns: list[Trajectory], single: list[Trajectory], count: int, seed: int) -> list[Trajectory]:
    """The training set: every conversation turn, and `count` of the single-turn answers (a seeded choice)."""
    rng = random.Random(seed * 7919 + 29)
    return turns + rng.sample(single, min(count, len(single)))


def kl_by_depth(measure, heldout_turns: list[Trajectory]) -> dict[str, dict]:
    """{depth: KLEstimate as a dict} of the held-out turns, `measure(trajectories) -> KLEstimate` per depth."""
    depths = sorted({t.depth for t in heldout_turns})
    return {str(d): asdict(measure([t for t in heldout_turns if t.depth == d])) for d in depths}


def depth_record(reference: dict[str, dict], baked: dict[str, dict], single_turn: dict | None) -> dict:
    """baking.json's kl.multi_turn: the held-out KL per depth of the unprompted base and the kept adapter, and the
    kept adapter's on the single-turn held-out answers (what baking_mckl measures)."""
    ratios = {d: baked[d]["per_token"] / r["per_token"] if r["per_token"] > 0 else None for d, r in reference.items()}
    return {"measure": "exact full-vocabulary KL(teacher || model) on the held-out conversations' agent turns, "
                       "per depth (agent turn)",
            "by_depth": {d: {"unprompted_base": reference[d], "baked": baked[d], "ratio": ratios[d]}
                         for d in reference},
            "single_turn": single_turn}

