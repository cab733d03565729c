"""Settings of bakes built from bakes: when prompt pursuit stops and what scores its rounds.

Each field carries its help text, from which the CLI builds its options.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BakingError
from ..utils.settings import in_range, setting
from ..utils.text import quoted


@dataclass
class PursuitSettings:
    """When pursuit stops. Serialised into pursuit.json."""

    max_rounds: int = setting(5, help="Most pursuit rounds (round 1 is the plain bake).")
    min_improvement: float = setting(0.01, help=(
        "Stop once a round improves the score by less than this fraction of the previous round's score "
        "(0.01 = 1%)."))
    evaluator: str = setting("default", help=(
        "What scores each round, higher is better: default (adherence for a built-in persona's prompt, else "
        "quality), quality (1 - KL/KL_unprompted to the original prompted base), adherence[:PERSONA], or an "
        "lm_eval TASK:METRIC."))

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if isinstance(self.max_rounds, bool) or not isinstance(self.max_rounds, int) or self.max_rounds < 1:
            raise BakingError(f"--max-rounds must be an integer ≥ 1 (got {quoted(self.max_rounds)})")
        if not in_range(self.min_improvement, low=0):
            raise BakingError("--min-improvement must be a number ≥ 0, e.g. 0.01 for 1% "
                              f"(got {quoted(self.min_improvement)})")


COMPOSE_MODES = ("joint", "replay", "merge", "sequential")
JOINT_TEACHERS = ("base", "chain")


@dataclass
class ComposeSettings:
    """What a stage of several prompts bakes towards, so a later prompt does not overwrite an earlier one.

    Serialised into sequence.json and pipeline.json; the recipe's `compose:` mapping and
    `lm-eval-baking sequence` build it. docs/pipeline.md has the measurement behind the default.
    """

    mode: str = setting("joint", choices=COMPOSE_MODES, flag="compose", help=(
        "joint: stage n's teacher reads every prompt baked so far, joined in order into one system message; "
        "replay: stage n also trains on earlier stages' answers, each with its own prompt as the teacher's; "
        "merge: each prompt is baked from the base (on its own earlier cycles only) and the adapters are summed; "
        "sequential: stage n's teacher reads its own prompt only (earlier prompts may be overwritten)."))
    joint_teacher: str = setting("base", choices=JOINT_TEACHERS, help=(
        "joint mode: whose weights read the joined prompts. base: the original base (the target a user means "
        "by 'both prompts'); chain: the base with the earlier stages merged (their prompts then act twice)."))
    join_template: str = setting("{earlier}\n{prompt}", help=(
        "How joint mode joins the prompts: {earlier} is the prompts so far joined the same way, {prompt} the next."))
    replay_weight: float = setting(0.5, help=(
        "replay mode: the share of a stage's training answers drawn from earlier stages (the rest are its own)."))

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.mode not in COMPOSE_MODES:
            raise BakingError(f"compose mode {quoted(self.mode)} is not known; use one of {', '.join(COMPOSE_MODES)}")
        if self.joint_teacher not in JOINT_TEACHERS:
            raise BakingError(f"compose joint_teacher {quoted(self.joint_teacher)} is not known; use base or chain")
        if not isinstance(self.join_template, str) or "{earlier}" not in self.join_template \
                or "{prompt}" not in self.join_template:
            raise BakingError(f"compose join_template {quoted(self.join_template)} must hold {{earlier}} and "
                              "{prompt}, e.g. '{earlier}\\n{prompt}'")
        try:
            self.join_template.format(earlier="", prompt="")
        except (KeyError, IndexError, ValueError):
            raise BakingError(f"compose join_template {quoted(self.join_template)} may hold only {{earlier}} and "
                              "{prompt} (write other braces as {{ and }})") from None
        if not in_range(self.replay_weight, above=0, below=1):
            raise BakingError(f"the replay weight (--replay-weight, recipe compose.replay_weight) must be a share "
                              f"between 0 and 1, e.g. 0.5 "
                              f"(got {quoted(self.replay_weight)})")

    def joined(self, prompts: list[str]) -> str:
        """Every distinct prompt so far, in the order first baked, as one system message."""
        distinct = list(dict.fromkeys(prompts))
        text = distinct[0]
        for prompt in distinct[1:]:
            text = self.join_template.format(earlier=text, prompt=prompt)
        return text
