"""Settings of the validations that generate or select data: persona-drift conversations, forgetting runs.

Each field carries its help text, from which the CLI builds its options.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..constants import DEFAULT_MODEL, FORGETTING_GROUP
from ..core.verdicts import MAX_FORGETTING_DROP_PCT, check_forgetting_drop
from ..core.conversations import OPENERS, TOPICS, USER_SIMULATOR_PROMPT, ConversationSettings  # noqa: F401 (their home is core: multi-turn baking uses them too)
from ..errors import BakingError
from ..utils.settings import in_range, setting

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
