"""Multi-turn baking: training examples from simulated conversations (docs/multi-turn.md).

    conversations of the prompted agent with a simulated user (core.conversations, one KV cache per batch
    of conversations kept from turn to turn) -> one trajectory per (conversation, agent turn in the depth
    range): question = that turn's user message, history = the conversation before it, answer = the
    agent's reply -> trained and measured like any other trajectory (PromptBaker, token_level_kl)

The student's context is the history and the question with no system prompt; the teacher's has the prompt
first and, with `refresh`, again next to the question (BakePrompt.context), so its target at depth is the
behaviour the prompt asks for, not the drifted one.

Each turn remembers its conversation, so training reads a conversation once (PromptBaker.training_units and
student_inputs, core.shared_history; docs/multi-turn.md, Cost), not each turn's history again.
"""

from __future__ import annotations

import random
from dataclasses import asdict, replace
from functools import partial
from typing import Callable

from ..core.batching import autocast
from ..core.conversations import ConversationSettings, generate_conversations
from ..core.prompts import BakePrompt
from ..core.sampling import Trajectory, batch_seed
from .config import BakeConfig
from .workdir import WorkDir

# The held-out conversations' turns of a multi-turn bake: data/heldout_turns.jsonl, beside heldout.jsonl
# (single-turn in every bake: what baking_mckl scores).
HELDOUT_TURNS = "heldout_turns"

CATEGORY = "conversation"


def teacher_prompt(prompt: BakePrompt, config: BakeConfig) -> BakePrompt:
    """The bake's prompt as a multi-turn teacher reads it: refreshed next to the latest user message when asked
    (config.multi_turn.refresh_as, resolved by the plan to system or user)."""
    settings = config.multi_turn
    if not settings.enabled or not settings.refresh:
        return prompt
    return replace(prompt, refresh=settings.refresh_as)


def turn_trajectories(conversations: list[list[dict]], depths: range, tokenizer, temperature: float,
                      conversation_ids: list[int] | None = None) -> list[Trajectory]:
    """One trajectory per conversation and agent turn in `depths` (1: the reply to the opener), conversation by
    conversation. The answer is the reply's tokens and the end-of-turn token, as the chat template closes it
    when the reply is read back in the next turn's history. Each turn carries its conversation's id
    (`conversation_ids`, default 0, 1, ...)."""
    end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids = conversation_ids if conversation_ids is not None else list(range(len(conversations)))
    out = []
    for conversation, messages in zip(ids, conversations):
        for depth in depths:
            user, reply = messages[2 * depth - 2], messages[2 * depth - 1]
            out.append(Trajectory(
                question=user["content"], answer=reply["content"],
                answer_ids=tokenizer.encode(reply["content"], add_special_tokens=False) + end,
                category=CATEGORY, temperature=temperature, history=messages[:2 * depth - 2], depth=depth,
                conversation=conversation))
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
    conversation_ids: list[int] = []
    with autocast(sampler.device, config.autocast_dtype):
        for index, start in enumerate(range(0, count, size)):
            ids = list(range(first_id + start, first_id + min(start + size, count)))
            chat = ConversationSettings(turns=settings.max_depth, max_new_tokens=config.max_new_tokens,
                                        temperature=temperature, seed=batch_seed(seed, index),
                                        conversations=len(ids))
            conversations += generate_conversations(sampler, tokenizer, [config.prompt] * len(ids), chat,
                                                    conversation_ids=ids, progress=progress)
            conversation_ids += ids
    return turn_trajectories(conversations, settings.depths, tokenizer, temperature, conversation_ids)


def conversation_training_set(sampler, tokenizer, config: BakeConfig, budget: dict,
                              sample_single: Callable[[None], list], watch, progress: bool) -> list[Trajectory]:
    """A multi-turn bake's training set: the conversation turns, then `budget["single_turn_answers"]` of the
    single-turn answers `sample_single(None)` samples as a plain bake does (a seeded choice), when the mix asks."""
    with watch.phase("sampling"):
        train = sample_conversation_turns(sampler, tokenizer, config, heldout=False, progress=progress)
    count = budget["single_turn_answers"]
    if count:
        rng = random.Random(config.seed * 7919 + 29)
        single = sample_single(None)
        train += rng.sample(single, min(count, len(single)))
    return train


def heldout_turns(work: WorkDir, sampler, tokenizer, config: BakeConfig, watch, progress: bool) -> list[Trajectory]:
    """The held-out conversations' turns: read back from the work folder, or sampled now and saved there."""
    turns = work.trajectories(HELDOUT_TURNS)
    if turns is None:
        with watch.phase("sampling"):
            turns = sample_conversation_turns(sampler, tokenizer, config, heldout=True, progress=progress)
        work.save_trajectories(HELDOUT_TURNS, turns)
        work.update_state(seconds=watch.seconds)
    return turns


def kl_by_depth(measure, turns: list[Trajectory]) -> dict[str, dict]:
    """{depth: KLEstimate as a dict} of `turns`, `measure(trajectories) -> KLEstimate` run once per depth."""
    depths = sorted({t.depth for t in turns})
    return {str(d): asdict(measure([t for t in turns if t.depth == d])) for d in depths}


def depth_record(baker, turns: list[Trajectory], single_turn: list[Trajectory]) -> dict:
    """baking.json's kl.multi_turn: the held-out KL per depth of the unprompted base and of the adapter `baker`
    trains now (the kept one), and the adapter's on the single-turn held-out answers (what baking_mckl scores)."""
    reference = kl_by_depth(partial(baker.heldout_kl, student_is_base=True), turns)
    baked = kl_by_depth(baker.heldout_kl, turns)
    ratios = {d: baked[d]["per_token"] / r["per_token"] if r["per_token"] > 0 else None for d, r in reference.items()}
    return {"measure": "exact full-vocabulary KL(teacher || model) on the held-out conversations' agent turns, "
                       "per depth (agent turn)",
            "by_depth": {d: {"unprompted_base": reference[d], "baked": baked[d], "ratio": ratios[d]}
                         for d in reference},
            "single_turn": asdict(baker.heldout_kl(single_turn))}
