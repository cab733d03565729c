"""What a composed adapter keeps of each prompt, measured question by question (paired).

For each prompt with a programmatic check (a built-in persona's scorer), every held-out
question is answered greedily by the models a composition is judged against:

    unprompted base | base + this prompt | base + every prompt joined | the model after the
    prompt's own stage | the composed model (no prompt)

and two paired statistics come out of those scores, each with a 95% CI:

- vs_joint: composed − jointly prompted base (the target of "bake A, then B");
- kept: the share of the prompt's behaviour gain over the unprompted base that the
  composed model keeps, relative to what it had right after its own stage:
  mean(composed − unprompted) / mean(own stage − unprompted).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..core.stats import compare_paired, ratio_of_means
from ..evals.personas import persona_for_prompt
from ..training.config import BakeConfig
from .evaluators import AdherenceEvaluator, heldout_questions


@dataclass
class PromptBehaviour:
    """Per held-out question scores of one prompt's check, on every model a composition is judged by."""

    prompt: str
    persona: str
    unprompted: list[float]
    own_prompted: list[float]
    joint_prompted: list[float]
    after_own_stage: list[float] = field(default_factory=list)
    composed: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        """Means, the composed − jointly prompted difference and the kept share, each with its CI."""
        out = {"prompt": self.prompt, "persona": self.persona, "questions": len(self.unprompted),
               **{name: _mean(getattr(self, name)) for name in
                  ("unprompted", "own_prompted", "joint_prompted", "after_own_stage", "composed")}}
        if self.composed:
            vs_joint = compare_paired(self.joint_prompted, self.composed)
            out["vs_joint"] = {"difference": vs_joint.difference, "ci": [vs_joint.difference_ci.low,
                                                                         vs_joint.difference_ci.high],
                               "p_value": vs_joint.p_value}
        if self.composed and self.after_own_stage:
            gain_kept = [c - u for c, u in zip(self.composed, self.unprompted)]
            gain_own = [o - u for o, u in zip(self.after_own_stage, self.unprompted)]
            kept, ci = ratio_of_means(gain_kept, gain_own)
            out["kept"] = {"share": None if kept != kept else kept, "ci": [ci.low, ci.high]}
        return out

    def to_dict(self) -> dict:
        return asdict(self)


class BehaviourProbe:
    """Greedy answers to the held-out questions, scored by the prompt's persona check (one per prompt)."""

    def __init__(self, prompt: str, config: BakeConfig):
        persona = persona_for_prompt(prompt)
        self.prompt = prompt
        self.evaluator = None if persona is None else AdherenceEvaluator(
            persona, heldout_questions(config), max_new_tokens=config.max_new_tokens,
            batch_size=config.generation_batch_size)

    @property
    def measurable(self) -> bool:
        return self.evaluator is not None

    def scores(self, model, tokenizer, system_prompt: str | None = None) -> list[float]:
        return self.evaluator.scores(model, tokenizer, system_prompt)

    def start(self, model, tokenizer, joint_prompt: str) -> PromptBehaviour:
        """The three base-model score lists (no prompt, this prompt, every prompt joined)."""
        return PromptBehaviour(self.prompt, self.evaluator.persona.name, self.scores(model, tokenizer),
                               self.scores(model, tokenizer, self.prompt), self.scores(model, tokenizer, joint_prompt))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
