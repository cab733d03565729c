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
from ..evals.personas import Persona, personas_for_prompt
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
    """Greedy answers to the held-out questions, answered once per model and scored by each of the prompt's
    persona checks (the pirate prompt has two: the opening word and pirate words anywhere)."""

    def __init__(self, prompt: str, personas: list[Persona], config: BakeConfig):
        self.prompt, self.personas = prompt, personas
        self.evaluator = AdherenceEvaluator(personas[0], heldout_questions(config),
                                            max_new_tokens=config.max_new_tokens,
                                            batch_size=config.generation_batch_size)

    @classmethod
    def for_prompt(cls, prompt: str, config: BakeConfig) -> "BehaviourProbe | None":
        """The probe of `prompt`'s built-in persona checks; None for a prompt without one."""
        personas = personas_for_prompt(prompt)
        return cls(prompt, personas, config) if personas else None

    def scores(self, model, tokenizer, system_prompt: str | None = None) -> dict[str, list[float]]:
        """Each check's score per held-out question, in order, from one set of greedy answers."""
        answers = self.evaluator.answers(model, tokenizer, system_prompt)
        return {p.name: [float(p.score(a)) for a in answers] for p in self.personas}

    def start(self, model, tokenizer, joint_prompt: str) -> dict[str, PromptBehaviour]:
        """Each check's three base-model score lists (no prompt, this prompt, every prompt joined)."""
        unprompted, own, joint = (self.scores(model, tokenizer, system) for system in (None, self.prompt, joint_prompt))
        return {name: PromptBehaviour(self.prompt, name, unprompted[name], own[name], joint[name])
                for name in unprompted}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


class CompositionTracker:
    """Every prompt's persona checks: on the base models once, then on the composed model after each stage.

    `prompts` maps a label (a stage name, or the prompt's number) to its prompt; results are keyed
    "LABEL:PERSONA", since a prompt may have several checks (or none, and then no entry).
    """

    def __init__(self, prompts: dict[str, str], config: BakeConfig, joint_prompt: str, model, tokenizer):
        self.probes = {label: probe for label, prompt in prompts.items()
                       if (probe := BehaviourProbe.for_prompt(prompt, config)) is not None}
        self.behaviour = {f"{label}:{name}": behaviour for label, probe in self.probes.items()
                          for name, behaviour in probe.start(model, tokenizer, joint_prompt).items()}

    def after_stage(self, model, tokenizer, label: str) -> dict[str, float]:
        """Score the composed model after the stage that baked `label`'s prompt; returns each check's mean."""
        for own_label, probe in self.probes.items():
            for name, scores in probe.scores(model, tokenizer).items():
                behaviour = self.behaviour[f"{own_label}:{name}"]
                behaviour.composed = scores
                if own_label == label:
                    behaviour.after_own_stage = scores
        return {key: _mean(b.composed) for key, b in self.behaviour.items()}

    def summaries(self) -> dict[str, dict]:
        return {key: b.summary() for key, b in self.behaviour.items()}

    def scores(self) -> dict[str, dict]:
        return {key: b.to_dict() for key, b in self.behaviour.items()}


def format_behaviour_table(summaries: dict[str, dict]) -> list[str]:
    """Markdown rows of what each prompt's checks kept; a difference whose CI holds zero is shown as none."""
    if not summaries:
        return []
    lines = ["behaviour (persona check, greedy, share of held-out questions; paired, 95% CI):", "",
             "| prompt: check | unprompted | prompted | jointly prompted | after own stage | composed "
             "| composed − joint | gain kept |", "| --- |" + " ---: |" * 7]
    for key, m in summaries.items():
        lines.append(f"| {key} | {m['unprompted']:.3f} | {m['own_prompted']:.3f} | {m['joint_prompted']:.3f} "
                     f"| {_fmt(m['after_own_stage'])} | {_fmt(m['composed'])} | {format_difference(m.get('vs_joint'))} "
                     f"| {format_share(m.get('kept'))} |")
    return lines


def format_difference(vs: dict | None) -> str:
    """A paired difference whose CI holds zero is shown as none: it is not a measured change."""
    if not vs:
        return "–"
    low, high = vs["ci"]
    shown = "none" if low <= 0 <= high else f"{vs['difference']:+.3f}"
    return f"{shown} [{low:+.3f}, {high:+.3f}]"


def format_share(kept: dict | None) -> str:
    if not kept or kept["share"] is None:
        return "– (no gain after its own stage)"
    low, high = kept["ci"]
    return f"{kept['share']:.0%} [{_pct(low)}, {_pct(high)}]"


def _pct(value: float) -> str:
    return "−∞" if value == float("-inf") else "+∞" if value == float("inf") else f"{value:.0%}"


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"
