"""Settings of the validations that generate or select data: persona-drift conversations, forgetting runs.

Each field carries its help text, from which the CLI builds its options.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..constants import DEFAULT_MODEL, FORGETTING_GROUP
from ..core.verdicts import MAX_FORGETTING_DROP_PCT, check_forgetting_drop
from ..errors import BakingError
from ..utils.settings import MAX_TEMPERATURE, in_range, setting

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


@dataclass
class ForgettingSettings:
    """How `lm-eval-baking forgetting` scores the base model and the adapters."""

    model: str = setting(DEFAULT_MODEL, help="Base model the adapters were baked on: 'default', a HF id or a directory.")
    tasks: list[str] = setting(default_factory=lambda: [FORGETTING_GROUP], help=(
        "lm_eval tasks or groups to score on; groups are expanded into their tasks."))
    max_forgetting_drop_pct: float = setting(MAX_FORGETTING_DROP_PCT, help=(
        "Largest allowed relative drop of a task's score, in percent of the base model's score."))
    limit: float | None = setting(None, metavar="N", help=(
        "Docs per task: a count, or a fraction below 1 (for quick checks only: verdicts need every doc)."))
    batch_size: int = setting(16, help="lm_eval batch size.")
    device: str = setting("cpu", help="Torch device, e.g. cpu or cuda:0.")
    apply_chat_template: bool = setting(False, help="Score the prompts inside the model's chat template.")
    reuse_base: bool = setting(True, help=(
        "Reuse the base model's per-doc scores stored by an earlier run with the same model weights, tasks, task "
        "data, settings and library versions (the base-model store: $LM_EVAL_BAKING_BASE_STORE, else "
        "<cache>/lm_eval_base), and store the ones measured; --no-reuse-base scores the base model again and "
        "stores nothing."))

    def __post_init__(self):
        if self.limit is not None:
            if not in_range(self.limit, above=0):
                raise BakingError(f"--limit must be a finite number above 0 (got {self.limit})")
            self.limit = int(self.limit) if self.limit >= 1 else self.limit
        check_forgetting_drop(self.max_forgetting_drop_pct, "--max-forgetting-drop-pct")
        if self.batch_size < 1:
            raise BakingError("--batch-size must be at least 1")
        if not self.tasks:
            raise BakingError("--tasks needs at least one lm_eval task or group")


@dataclass
class TaskPromptSettings:
    """Which lm_eval task's few-shot context `bake --task` bakes, and where its questions come from."""

    num_fewshot: int | None = setting(None, metavar="K", help=(
        "With --task: the number of few-shot examples in the baked context (default: the task's own num_fewshot)."))
    include_path: str | None = setting(None, metavar="DIR", help=(
        "With --task: a folder of lm_eval task YAMLs to search besides lm-eval-baking's own and lm_eval's."))
    fewshot_seed: int = setting(1234, help=(
        "With --task: lm_eval's --fewshot_random_seed; the baked examples are those lm_eval draws with it for the "
        "first evaluated doc (with the first_n sampler: every doc's)."))
    max_task_questions: int | None = setting(200, metavar="N", help=(
        "With --task: at most this many of the task's questions (a seeded sample of the docs outside its "
        "evaluated split); the bake samples answers for them."))

    def __post_init__(self):
        if self.num_fewshot is not None and self.num_fewshot < 1:
            raise BakingError(f"--num-fewshot must be at least 1 (got {self.num_fewshot}); a 0-shot context has no "
                              "examples to bake")
        if self.max_task_questions is not None and self.max_task_questions < 2:
            raise BakingError("--max-task-questions must be at least 2 (some are held out)")
