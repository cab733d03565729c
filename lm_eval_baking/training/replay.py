"""Replay: answers of earlier prompts kept in a later bake's training data, each with its own teacher prompt."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Replay:
    """Answers of earlier prompts mixed into a bake's training data (compose mode `replay`).

    Each replayed trajectory carries the prompt its teacher reads (`teacher_prompt`),
    so one bake keeps earlier targets while it learns its own. The mix replaces a
    `weight` share of the bake's own answers, so a replay bake trains as many
    steps as a plain one.
    """

    weight: float
    trajectories: list

    def mix(self, own: list, seed: int) -> list:
        rng = random.Random(seed * 7919 + 17)
        replayed = round(self.weight * len(own))
        replayed = min(replayed, len(self.trajectories))
        kept = rng.sample(own, len(own) - replayed)
        return kept + rng.sample(self.trajectories, replayed)
