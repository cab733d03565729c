"""What a bake will do, decided before any weights load: the question split, the LoRA targets, the sizes.

A BakeConfig may leave sizes unset (samples per question, held-out samples,
epochs) and name LoRA targets by keyword ('attention', 'all-linear'). The
plan makes them concrete from the question file and the model's own layer
names (read from a weightless skeleton), so that

- baking.json records exactly what ran (`config`), beside what was asked;
- two requests that come to the same concrete config are the same bake;
- a bad target name or an impossible setting fails in seconds, not after the
  weights have loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core import models
from ..core.lora_targets import LoraTargets, resolve_targets
from ..core.questions import Question, load_questions, split_questions
from ..errors import BakingError
from .config import BakeConfig


@dataclass
class BakePlan:
    requested: BakeConfig
    """The config as the user gave it (unset sizes, target keywords)."""
    config: BakeConfig
    """The same config made concrete: what the bake runs and records."""
    model_path: str
    train_questions: list[Question]
    heldout_questions: list[Question]
    targets: LoraTargets
    budget: dict
    """Sizes: questions, samples per question, trajectories, epochs, steps (BakeConfig.budget)."""

    def to_record(self) -> dict:
        """The part of baking.json that says how the request became this bake."""
        requested = {k: v for k, v in self.requested.to_dict().items() if v != self.config.to_dict()[k]}
        return {"requested": requested, "budget": self.budget, "lora_targets": self.targets.to_record()}


def plan_bake(config: BakeConfig, *, trust_remote_code: bool = False, device: str | None = None) -> BakePlan:
    """Resolve `config` against its questions and its model's config (no weights are read)."""
    questions = load_questions(config.questions)
    train, heldout = split_questions(questions, config.heldout_fraction, config.seed)
    model_path = models.resolve_model(config.model)
    model_config = models.model_config(model_path, trust_remote_code=trust_remote_code)
    vocabulary = getattr(model_config, "vocab_size", None)
    if config.top_k is not None and isinstance(vocabulary, int) and config.top_k > vocabulary:
        raise BakingError(f"--top-k {config.top_k} is larger than the model's vocabulary of {vocabulary} tokens; "
                          f"pass a smaller --top-k (e.g. 64), or omit it for the full vocabulary")
    if config.load_in_4bit:
        models.check_4bit_device(models.pick_device(device or config.device))
    skeleton = models.model_skeleton(model_path, trust_remote_code=trust_remote_code)
    targets = resolve_targets(skeleton, list(config.target_modules))
    resolved = config.resolved(len(train), len(heldout), targets.target_modules)
    return BakePlan(requested=config, config=resolved, model_path=model_path, train_questions=train,
                    heldout_questions=heldout, targets=targets, budget=config.budget(len(train), len(heldout)))
