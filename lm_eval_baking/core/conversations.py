"""Simulated conversations: an agent with a system prompt chats with a simulated user (Li et al. 2024).

The agent is the model with its system prompt; the simulated user is the same
model with a user-simulator prompt that names a new everyday topic each turn,
reading the latest turns with the roles swapped. Many conversations are
generated in lockstep, one batch per side; the agents' KV cache is kept from
turn to turn (core.kv_batch).

Two layers use them: the persona-drift validation (evals/drift.py), and
multi-turn baking (training/multi_turn.py), whose training examples are the
agent's turns of such conversations. So they live here, below both.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BakingError
from ..utils.settings import MAX_TEMPERATURE, in_range, setting
from .chat import encode_like_lm_eval

# torch and the KV cache are imported inside the functions: ConversationSettings is read by light commands
# (`bake --help`, recipe checks) that never load torch.

# The simulated user gets a new everyday topic each turn: left to itself, a small
# model echoes the assistant ("You're welcome!") and the chat collapses into a loop.
USER_SIMULATOR_PROMPT = (
    "You are a curious person chatting with an AI assistant. "
    "Reply with one short sentence that asks the assistant a question about {topic}."
)
TOPICS = (
    "cooking", "gardening", "sport", "books", "money", "the weather", "pets", "travel", "music", "sleep",
    "friendship", "films", "the sea", "history", "work", "science", "holidays", "the city", "art", "health",
)
# The simulated user's first message. A fixed opener (chosen by the seed) rather
# than a generated one: a small model asked to open a chat often answers instead.
OPENERS = (
    "Hi! What should I cook for dinner tonight?",
    "Hello! Do you have any tips for keeping houseplants alive?",
    "Hey, how do I start running as a beginner?",
    "Hi there! What is a good book to read on holiday?",
    "Hello! How can I save money on groceries?",
    "Hi! What is a fun thing to do on a rainy day?",
)


@dataclass(frozen=True)
class ConversationSettings:
    """What decides a generated conversation; stored with it so a stale one is never reused."""

    turns: int = setting(30, help=(
        "Agent turns per conversation, each after one simulated-user turn (the project measures drift over >= 30)."))
    max_new_tokens: int = setting(40, help=(
        "Length cap of every turn, agent and user alike: short turns keep CPU generation to minutes."))
    temperature: float = setting(0.7, help="Sampling temperature of both sides of the conversation (0 = greedy).")
    seed: int = setting(0, help=(
        "Seeds the conversations: conversation k opens and changes topics by seed + k, and samples from seed."))
    conversations: int = setting(5, help=(
        "Conversations per persona, each with its own opener and topics: drift's confidence intervals resample "
        "whole conversations, so more conversations give tighter intervals."))
    user_context_turns: int = setting(2, help=(
        "Agent turns the simulated user reads before it replies (0: the whole conversation). It only asks about "
        "the turn's topic, so a short view serves; the whole one is re-read every turn and makes generation "
        "several times slower (docs/performance.md)."))
    user_prompt: str = setting(USER_SIMULATOR_PROMPT, help=(
        "System prompt of the simulated user; {topic} is replaced by a new everyday topic each turn."))

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.turns < 1:
            raise BakingError("--turns must be at least 1")
        if self.max_new_tokens < 1:
            raise BakingError("--max-new-tokens must be at least 1")
        if not in_range(self.temperature, low=0, high=MAX_TEMPERATURE):
            raise BakingError(f"--temperature must be a finite number, 0 (greedy) or above and at most "
                              f"{MAX_TEMPERATURE:g} (got {self.temperature})")
        if self.conversations < 1:
            raise BakingError("--conversations must be at least 1")
        if self.user_context_turns < 0:
            raise BakingError("--user-context-turns must be 0 (the whole conversation) or more")

    @property
    def opener(self) -> str:
        return self.opener_of(0)

    def opener_of(self, conversation: int) -> str:
        return OPENERS[(self.seed + conversation) % len(OPENERS)]

    def user_system_prompt(self, turn: int, conversation: int = 0) -> str:
        # Conversations step through the topics at different strides, so no two share their sequence.
        return self.user_prompt.format(topic=TOPICS[(self.seed + conversation + turn * (1 + conversation))
                                                    % len(TOPICS)])



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
    import torch
    from tqdm.auto import tqdm

    from .batching import autocast
    from .kv_batch import CachedBatch
    from .packed_weights import packed_linears
    from .sampling import eos_ids

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
                agent_views = [[system_message(prompt)] + history for prompt, history in zip(system_prompts, histories)]
                agents.sync([_encode_view(tokenizer, view) for view in agent_views])
                for history, reply in zip(histories, _replies(agents, tokenizer, settings, stop_ids)):
                    history.append({"role": "assistant", "content": reply})
                agents.rollback()  # the reply comes back as the next turn's text, tokenized as the template gives it
                if turn == settings.turns:
                    break
                user_views = [[system_message(settings.user_system_prompt(turn, k))] + user_window(history, settings)
                              for k, history in zip(ids, histories)]
                users = CachedBatch(model, tokenizer.pad_token_id, len(user_views))
                users.extend([_encode_view(tokenizer, view) for view in user_views])
                for history, reply in zip(histories, _replies(users, tokenizer, settings, stop_ids)):
                    history.append({"role": "user", "content": reply})
    finally:
        torch.random.set_rng_state(rng_state)
    return histories


def system_message(prompt: str) -> dict:
    """A system message of `prompt`."""
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


def _replies(batch, tokenizer, settings: ConversationSettings, stop_ids: set[int]) -> list[str]:
    """The next message of every row of `batch` (a core.kv_batch.CachedBatch), as text."""
    from .sampling import cut_at_eos

    answers = batch.generate(settings.max_new_tokens, settings.temperature, stop_ids)
    return [tokenizer.decode(cut_at_eos(ids, stop_ids), skip_special_tokens=True).strip() for ids in answers]
