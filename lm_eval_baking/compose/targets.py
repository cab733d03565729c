"""What each stage of a composition bakes towards (ComposeSettings.mode), for sequences and pipelines alike.

A user who bakes "use the tools" and then "be our persona" wants a model that does
both: the original base prompted with both prompts. A stage is baked into the base
with every earlier stage merged (the student's start) and its target is one of:

- sequential: that start, prompted with the stage's own prompt (earlier prompts are
  not asked for, and a later stage may overwrite them);
- joint: a model prompted with every prompt so far, joined into one system message;
  the original base (`joint_teacher: base`) or the start (`chain`);
- replay: the original base with the stage's own prompt, on a share of its own
  answers, and with each earlier prompt on that prompt's stored answers;
- merge: the student starts from the base with only this prompt's earlier stages
  merged (other prompts' adapters are left out), prompted with its own prompt; the
  composition is the sum of every stage's adapter (task arithmetic, as LoRA Soups'
  concatenation), so no stage trains against another prompt's weights.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..artifacts.bake_dir import BakeDir
from ..artifacts.lora import chain_id
from ..core import models
from ..core.sampling import Trajectory
from ..training.config import BakeConfig
from ..training.replay import Replay
from ..utils.hashing import sha256_text
from .config import ComposeSettings


@dataclass
class StageTarget:
    config: BakeConfig
    """The stage's bake settings; its prompt is what the teacher reads (the joined prompts in joint mode)."""
    target: str
    """'start' (the chain so far plays the teacher) or 'base' (the original base does)."""
    replay: Replay | None
    teacher_id: str | None
    """Names the student's start and the target, so a resumed bake cannot mix two targets' work."""
    start: list[Path]
    """The bakes merged into the base the student starts from: the chain so far, or in merge mode only the
    earlier bakes of this stage's prompt."""


@dataclass
class BakedStage:
    """An earlier stage, as a later one needs it: its prompt and the bake folders it kept."""

    prompt: str
    bakes: list[Path]


def stage_target(settings: ComposeSettings, config: BakeConfig, earlier: list[BakedStage],
                 chain: list[Path]) -> StageTarget:
    """The target of the stage baking `config.prompt` after the `earlier` stages (whose kept bakes are `chain`)."""
    chain = list(chain)
    start = chain_id(chain)
    if settings.mode == "merge":
        own = [bake for stage in earlier if stage.prompt == config.prompt for bake in stage.bakes]
        return StageTarget(config, "start", None, chain_id(own), own)
    if not earlier or settings.mode == "sequential":
        return StageTarget(config, "start", None, start, chain)
    if settings.mode == "joint":
        prompt = settings.joined([s.prompt for s in earlier] + [config.prompt])
        joint = replace(config, prompt=prompt)
        if settings.joint_teacher == "chain":
            return StageTarget(joint, "start", None, start, chain)
        return StageTarget(joint, "base", None, f"{start} -> base prompted jointly", chain)
    replayed = [_replayed(stage) for stage in earlier if stage.prompt != config.prompt]
    trajectories = [t for stage in replayed for t in stage]
    if not trajectories:  # every earlier stage baked this same prompt (a later cycle of one prompt)
        return StageTarget(config, "base", None, f"{start} -> base", chain)
    digest = sha256_text("\n".join(f"{t.teacher_prompt}\t{t.question}\t{t.answer}" for t in trajectories))
    return StageTarget(config, "base", Replay(settings.replay_weight, trajectories),
                       f"{start} -> base, replay {settings.replay_weight:g} of {digest[:16]}", chain)


def _replayed(stage: BakedStage) -> list[Trajectory]:
    """The answers the stage's first bake trained on (its own prompt's, sampled from its target)."""
    rows = BakeDir(stage.bakes[0]).train_rows()
    return [replace(Trajectory.from_dict(row), teacher_prompt=row.get("teacher_prompt") or stage.prompt)
            for row in rows if not row.get("teacher_prompt")]


class BaseTeacher:
    """The original base, loaded once and only when a stage's target needs it."""

    def __init__(self, base_model: str, device: str):
        self.base_model, self.device, self._model = base_model, device, None

    def get(self, target: StageTarget):
        """The base when `target` needs it as its teacher, else None."""
        return self.model() if target.target == "base" else None

    def model(self):
        """The original base (frozen), loaded on first use: the teacher of 'base' targets, and the prompted
        base that pursued stages are compared with."""
        if self._model is None:
            self._model, _ = models.load_model(self.base_model, device=self.device)
            self._model.requires_grad_(False)
        return self._model
