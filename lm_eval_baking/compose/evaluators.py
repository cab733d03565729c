"""Evaluators: what pursuit rounds and sequence stages are scored by (higher is better).

An evaluator is a callable `(model, tokenizer, round_index) -> float`; round 0
is the unbaked base. One that also takes a `system_prompt` keyword can score
the model re-prompted with its prompt (the paper's "re-prompting" column).

- `quality`: 1 − MC-KL/MC-KL_unprompted to the ORIGINAL prompted base, the
  number `baking_mckl`'s quality metric gives;
- `adherence:PERSONA`: greedy persona adherence on the held-out questions;
- `TASK:METRIC`: an lm_eval task run on the model in memory.

`evaluator_spec` checks a spec (including the lm_eval task and metric names)
before anything is baked.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..artifacts.bake_dir import BakeDir
from ..core.chat import chat_prefix
from ..core.kl import KLEstimate, monte_carlo_kl
from ..core.stats import Interval, ratio_of_means
from ..core.questions import Question, load_questions, split_questions
from ..core.sampling import Trajectory, sample_trajectories
from ..core.scoring import continuation_logprobs
from ..errors import BakingError
from ..evals.lm_eval_glue import check_task_metric, evaluate_in_memory
from ..evals.personas import Persona, get_persona, persona_for_prompt
from ..training.config import BakeConfig
from ..utils.text import first_line, quoted


class Evaluator(Protocol):
    """Scores a model (higher is better); round 0 is the unbaked base."""

    def __call__(self, model, tokenizer, round_index: int) -> float: ...


def heldout_questions(config: BakeConfig) -> list[Question]:
    """The questions `bake(config)` holds out: never trained on, in any round or stage."""
    return split_questions(load_questions(config.questions), config.heldout_fraction, config.seed)[1]


@dataclass
class AdherenceEvaluator:
    """Share of greedy answers to held-out questions that a persona's scorer accepts.

    The most direct measure of "does the model do what the prompt says" where
    the prompt has a programmatic check (the pirate: the answer opens with
    "Ahoy"). Greedy, so it is deterministic from round to round.
    """

    persona: Persona
    questions: list[Question]
    max_new_tokens: int = 48
    batch_size: int = 64

    @property
    def name(self) -> str:
        return f"adherence:{self.persona.name}"

    def answers(self, model, tokenizer, system_prompt: str | None = None) -> list[str]:
        greedy = sample_trajectories(model, tokenizer, self.questions, system_prompt=system_prompt, temperature=0,
                                     max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, progress=False)
        return [t.answer for t in greedy]

    def scores(self, model, tokenizer, system_prompt: str | None = None) -> list[float]:
        """The scorer's value for each held-out question, in order: what paired comparisons are made of."""
        return [float(self.persona.score(a)) for a in self.answers(model, tokenizer, system_prompt)]

    def __call__(self, model, tokenizer, round_index: int, *, system_prompt: str | None = None) -> float:
        scores = self.scores(model, tokenizer, system_prompt)
        if system_prompt is None:
            self.last_scores = scores  # pursuit pairs each round with the one before, question by question
        return sum(scores) / len(scores)


@dataclass
class QualityEvaluator:
    """1 − KL(model) / KL(unprompted base), both from the ORIGINAL prompted base.

    KL is the Monte-Carlo estimate over held-out answers the original prompted
    base sampled (teacher log-probs stored with the bake), with the model's
    log-probs computed the way lm_eval scores a continuation: the same number
    `baking_mckl`'s `quality` metric gives. 1 = behaves like the prompted base,
    0 = like the unprompted base. It measures fidelity to the original prompted
    model, so pursuit rounds that overshoot it score lower.
    """

    heldout: list[Trajectory]
    batch_size: int = 16
    name: str = "quality"

    @classmethod
    def from_bake(cls, bake_dir: str | Path, batch_size: int = 16) -> "QualityEvaluator":
        folder = BakeDir(bake_dir)
        heldout = [Trajectory.from_dict(row) for row in folder.heldout_rows("re-run the bake with --overwrite")]
        evaluator = cls(heldout, batch_size)
        if not evaluator.unprompted_kl.per_token > 0:
            raise BakingError(
                f"the prompt changes nothing measurable on {folder.heldout_path} "
                f"(MC-KL {evaluator.unprompted_kl.per_token:.2g}), "
                "so quality 1 − KL/KL_unprompted is undefined; use a prompt that changes the answers "
                "(or, for pursuit, another --evaluator)"
            )
        return evaluator

    @property
    def unprompted_kl(self) -> KLEstimate:
        return monte_carlo_kl([t.teacher_logprob for t in self.heldout], [t.base_logprob for t in self.heldout],
                              [t.n_tokens for t in self.heldout])

    def kl(self, model, tokenizer, system_prompt: str | None = None) -> KLEstimate:
        """MC-KL(original prompted base ‖ model), the model seeing `system_prompt` (default: none)."""
        return monte_carlo_kl([t.teacher_logprob for t in self.heldout], self._logprobs(model, tokenizer, system_prompt),
                              [t.n_tokens for t in self.heldout])

    def _logprobs(self, model, tokenizer, system_prompt: str | None) -> list[float]:
        pairs = [(chat_prefix(tokenizer, t.question, system_prompt), t.answer) for t in self.heldout]
        return [logprob for logprob, _ in continuation_logprobs(model, tokenizer, pairs, batch_size=self.batch_size,
                                                                progress=False)]

    def quality_with_ci(self, model, tokenizer, *, seed: int = 0) -> tuple[float, Interval]:
        """Quality with a 95% paired-bootstrap CI over the held-out answers (each answer's MC-KL per token for
        the model and for the unprompted base, resampled together)."""
        model_kl = [(t.teacher_logprob - lp) / t.n_tokens for t, lp in
                    zip(self.heldout, self._logprobs(model, tokenizer, None))]
        base_kl = [(t.teacher_logprob - t.base_logprob) / t.n_tokens for t in self.heldout]
        ratio, ci = ratio_of_means(model_kl, base_kl, seed=seed)
        return 1.0 - ratio, Interval(1.0 - ci.high, 1.0 - ci.low, ci.confidence)

    def __call__(self, model, tokenizer, round_index: int, *, system_prompt: str | None = None) -> float:
        return 1.0 - self.kl(model, tokenizer, system_prompt).per_token / self.unprompted_kl.per_token


@dataclass
class LmEvalEvaluator:
    """An lm_eval task's metric on the model in memory (HFLM wraps the model instance).

    The metric is negated when lm_eval says lower is better, so higher is
    always better. Our own tasks (baking_mckl, ...) read the bake named by
    `bake` (round 1 of a pursuit: samples of the original prompted base).
    """

    task: str
    metric: str
    bake: str | None = None
    batch_size: int = 8
    limit: int | float | None = None

    @property
    def name(self) -> str:
        return f"{self.task}:{self.metric}"

    def __call__(self, model, tokenizer, round_index: int, *, system_prompt: str | None = None) -> float:
        value, higher_is_better = evaluate_in_memory(
            model, tokenizer, self.task, self.metric, metadata={"bake": self.bake} if self.bake else {},
            system_instruction=system_prompt, batch_size=self.batch_size, limit=self.limit)
        return value if higher_is_better else -value


def evaluator_spec(spec, prompt: str) -> str:
    """Check an --evaluator value before anything is baked; returns its normal form (the record's name).

    - None / "default": "adherence:PERSONA" when the prompt is a built-in
      persona's (it has a programmatic check), else "quality";
    - "adherence" or "adherence:PERSONA": greedy persona adherence on the held-out questions;
    - "quality": 1 − MC-KL/MC-KL_unprompted to the original prompted base;
    - "TASK:METRIC": an lm_eval task run on the model in memory, e.g. "baking_mckl:kl_per_token".
    """
    spec = "default" if spec is None else str(spec).strip()
    persona = persona_for_prompt(prompt)
    if spec == "default":
        return f"adherence:{persona.name}" if persona else "quality"
    if spec == "adherence":
        if persona is None:
            raise BakingError("--evaluator adherence needs a persona with a scorer: use adherence:NAME "
                              "(see `lm-eval-baking drift-data --help`), quality, or TASK:METRIC")
        return f"adherence:{persona.name}"
    if spec.startswith("adherence:"):
        get_persona(spec.partition(":")[2])  # an unknown name fails here, before any baking
        return spec
    if spec == "quality":
        return spec
    task, _, metric = spec.partition(":")
    if not task.strip() or not metric.strip():
        raise BakingError(f"--evaluator {quoted(spec)} is not understood; use default, quality, adherence[:PERSONA] "
                          "or TASK:METRIC (e.g. baking_mckl:quality)")
    check_task_metric(task.strip(), metric.strip())  # an unknown task or metric fails here, before any baking
    return spec


def resolve_evaluator(spec, config: BakeConfig, reference_bake: str | Path) -> Evaluator:
    """Turn an --evaluator value (see `evaluator_spec`) or a callable into a scorer (higher is better).

    `reference_bake` is a bake on the original base (a pursuit's round 1): its
    held-out answers are what "quality" and our lm_eval tasks compare against.
    """
    if callable(spec):
        return spec
    spec = evaluator_spec(spec, config.prompt)
    if spec == "quality":
        return QualityEvaluator.from_bake(reference_bake, batch_size=config.batch_size * 2)
    if spec.startswith("adherence:"):
        return AdherenceEvaluator(get_persona(spec.partition(":")[2]), heldout_questions(config),
                                  max_new_tokens=config.max_new_tokens, batch_size=config.generation_batch_size)
    task, _, metric = spec.partition(":")
    return LmEvalEvaluator(task, metric, bake=str(reference_bake))


def evaluator_name(evaluator: Evaluator) -> str:
    return getattr(evaluator, "name", None) or getattr(evaluator, "__qualname__", None) or type(evaluator).__name__


def takes_system_prompt(evaluator: Evaluator) -> bool:
    try:
        return "system_prompt" in inspect.signature(evaluator).parameters
    except (TypeError, ValueError):
        return False


def checked_score(evaluator: Evaluator, model, tokenizer, round_index: int, *, system_prompt: str | None = None,
                  kept: str = "") -> float:
    """Run the evaluator; anything but a finite number becomes one clear BakingError."""
    name = evaluator_name(evaluator)
    try:
        extra = {"system_prompt": system_prompt} if system_prompt is not None else {}
        value = evaluator(model, tokenizer, round_index, **extra)
    except BakingError:
        raise
    except Exception as e:  # noqa: BLE001 - a user callable may raise anything; report it in one line
        raise BakingError(f"evaluator {name} failed on round {round_index} ({type(e).__name__}: {first_line(e)}){kept}; "
                          "fix the evaluator and rerun to continue") from e
    try:
        if isinstance(value, (bool, str, bytes)):
            raise TypeError
        score = float(value)
    except (TypeError, ValueError):
        score = None
    if score is None or not math.isfinite(score):
        raise BakingError(f"evaluator {name} returned {quoted(repr(value))} on round {round_index}, not a finite number{kept}; "
                          "make it return a float (higher is better)")
    return score


def reprompted_score(evaluator: Evaluator, model, tokenizer, prompt: str, round_index: int, *,
                     kept: str = "") -> float | None:
    """The evaluator's score of `model` with `prompt` given again as the system prompt.

    Re-prompting a baked model with its own prompt is the paper's "re-prompting"
    result. None when the evaluator cannot take a system prompt.
    """
    if not takes_system_prompt(evaluator):
        return None
    return checked_score(evaluator, model, tokenizer, round_index, system_prompt=prompt, kept=kept)
