"""What a finished bake records: the BakeRecord of baking.json, its verdict on the KL ratio, and phase timings."""

from __future__ import annotations

import platform
import resource
import time
from contextlib import contextmanager
from dataclasses import asdict

import torch

from ..artifacts.bake_dir import BakeRecord
from ..constants import BUILTIN_QUESTIONS
from ..core import models
from ..core.prompts import prompt_text_for_hash
from ..utils.hashing import sha256_file, sha256_text
from ..utils.versions import library_versions
from .config import BakeConfig
from .workdir import load_trainable_state, trainable_state

# A bake whose held-out KL ratio ends above this removed less than half of the prompt's effect:
# it is recorded and printed as a warning naming the settings to raise. Above 1 it made things worse: failed.
KL_RATIO_WARNING = 0.5


def judge_kl_ratio(ratio: float, config: BakeConfig, requested: BakeConfig | None = None,
                   falling: bool = False) -> tuple[str, list[str]]:
    """ok / warning / failed for a bake's held-out KL ratio, with the settings to change.

    `config` is the resolved config, `requested` what the user gave: a size the
    budget chose is raised through its --min-... setting, one the user set
    through its own flag. `falling`: the held-out KL still went down at the last
    measurement, so more steps come first.
    """
    requested = requested or config
    if not ratio <= 1.0:
        samples = _raise_samples(config, requested)
        return "failed", [f"the baked model is further from the prompted model than the unprompted base is "
                          f"(held-out KL ratio {ratio:.0%}): the bake made it worse; lower --learning-rate "
                          f"(now {config.learning_rate:g}) or raise {samples}"]
    if ratio > KL_RATIO_WARNING:
        samples, steps = _raise_samples(config, requested), _raise_steps(config, requested)
        advice = (f"raise {steps} first (the held-out KL was still falling), then {samples}" if falling
                  else f"raise {samples} or {steps}, or add questions")
        return "warning", [f"the bake removed only {1 - ratio:.0%} of the prompt's effect (held-out KL ratio "
                           f"{ratio:.0%}, above {KL_RATIO_WARNING:.0%}); {advice}"]
    return "ok", []


def _raise_samples(config: BakeConfig, requested: BakeConfig) -> str:
    if requested.samples_per_question is None:
        return (f"--min-trajectories (now {config.min_trajectories}, which gave {config.samples_per_question} "
                f"answers per question)")
    return f"--samples-per-question (now {config.samples_per_question})"


def _raise_steps(config: BakeConfig, requested: BakeConfig) -> str:
    if requested.epochs is None:
        return f"--min-steps (now {config.min_steps}, which gave {config.epochs} epochs)"
    return f"--epochs (now {config.epochs})"


class BestCheckpoint:
    """Every held-out KL measured during training, and the adapter weights of the lowest one.

    With `keep_best` (the authors kept the best validation KL) that adapter is
    the one written; without it, the last one. Its state rides in the trainer
    checkpoint, so a resumed bake keeps the same best.
    """

    def __init__(self, keep_best: bool):
        self.keep_best = keep_best
        self.evaluations: list[dict] = []
        self.best: dict | None = None
        self._best_weights: dict | None = None

    @classmethod
    def from_state(cls, keep_best: bool, state: dict | None) -> "BestCheckpoint":
        tracker = cls(keep_best)
        if state:
            tracker.evaluations = list(state["evaluations"])
            tracker.best = state["best"]
            tracker._best_weights = state.get("weights")
        return tracker

    def state(self) -> dict:
        return {"evaluations": self.evaluations, "best": self.best, "weights": self._best_weights}

    def observe(self, epoch: int, step: int, kl, model) -> None:
        entry = {"epoch": epoch, "step": step, "heldout_kl": asdict(kl)}
        self.evaluations.append(entry)
        if self.best is None or kl.per_token < self.best["heldout_kl"]["per_token"]:  # ties: the earlier
            self.best = entry
            self._best_weights = trainable_state(model) if self.keep_best else None

    @property
    def kept(self) -> dict:
        """The measurement whose adapter is written."""
        chosen = self.best if self.keep_best else self.evaluations[-1]
        rule = "lowest held-out KL measured" if self.keep_best else "last (--no-keep-best)"
        return {**chosen, "rule": rule}

    @property
    def still_falling(self) -> bool:
        kls = [e["heldout_kl"]["per_token"] for e in self.evaluations]
        return len(kls) >= 2 and kls[-1] < kls[-2]

    def restore(self, model) -> None:
        """Put the kept adapter's weights into `model` (nothing to do when it is the last one)."""
        if self.keep_best and self.best is not None and self.best != self.evaluations[-1]:
            load_trainable_state(model, self._best_weights)


class Stopwatch:
    """Wall time per named phase, for baking.json and the benchmarks."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def add(self, seconds: dict[str, float]) -> None:
        """Count time an interrupted run spent (restored from its work folder)."""
        for name, value in seconds.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + float(value)

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def report(self, answer_tokens: dict[str, int]) -> dict:
        return {
            "seconds": dict(self.seconds),
            "generation_tokens_per_s": answer_tokens["generated"] / max(self.seconds.get("sampling", 0.0), 1e-9),
            "training_tokens_per_s": answer_tokens["trained"] / max(self.seconds.get("training", 0.0), 1e-9),
            "answer_tokens": answer_tokens,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }


def questions_sha256(config: BakeConfig) -> str | None:
    """sha256 of the question file (None for the built-in pool, which is versioned with the package)."""
    if config.questions == BUILTIN_QUESTIONS:
        return None
    return sha256_file(config.questions)


def environment(device) -> dict:
    """What else decides the bits of a bake: on CPU the thread count changes float summation order."""
    return {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.version.cuda,
    }


def bake_record(config: BakeConfig, model_path: str, *, teacher: str | None = None, questions_count, reference_kl,
                epochs, performance, environment: dict | None = None, resumes: list | None = None,
                tracker: BestCheckpoint | None = None, plan=None, prompt_form: str | None = None,
                task: dict | None = None, multi_turn: dict | None = None) -> BakeRecord:
    """The BakeRecord of a finished bake. `config` is the resolved config; `plan` (training.plan.BakePlan) says
    what was asked and how it resolved; `tracker` which measurement's adapter was written; `teacher` names
    the teacher's weights when they are not the base's (pursuit); `task` the lm_eval task whose few-shot
    context is the prompt; `multi_turn` the held-out KL per depth of a multi-turn bake (kl.multi_turn), whose
    `kl` is then measured on its held-out conversations' turns."""
    if tracker is None:  # a caller that tracked nothing: the last epoch's adapter
        tracker = BestCheckpoint(keep_best=False)
        tracker.evaluations = [{"epoch": e["epoch"], "step": None, "heldout_kl": e["heldout_kl"]} for e in epochs]
    kept = tracker.kept
    final = kept["heldout_kl"]
    ratio = final["per_token"] / reference_kl.per_token if reference_kl.per_token > 0 else float("inf")
    status, warnings = judge_kl_ratio(ratio, config, plan.requested if plan else None, tracker.still_falling)
    return BakeRecord(
        kind="bake",
        config=config.to_dict(),
        teacher=teacher,
        prompt_sha256=sha256_text(prompt_text_for_hash(config.prompt)),
        prompt_form=prompt_form, task=task,
        base_model={"name_or_path": model_path, "sha256": models.model_fingerprint(model_path),
                    "config_sha256": models.config_fingerprint(model_path)},
        questions={"source": config.questions, "sha256": questions_sha256(config),
                   "train": questions_count[0], "heldout": questions_count[1]},
        kl={
            "measure": ("exact full-vocabulary KL(prompted base || model) on the agent turns of held-out simulated "
                        "conversations sampled at T=1 (the teacher's prompt refreshed as config.multi_turn says)"
                        if multi_turn else
                        "exact full-vocabulary KL(prompted base || model) on held-out answers sampled at T=1"),
            "unprompted_base": asdict(reference_kl),
            "per_epoch": epochs,
            "evaluations": tracker.evaluations,
            "kept": kept,
            "final_per_token": final["per_token"],
            "ratio_to_unprompted": ratio,
            **({"multi_turn": multi_turn} if multi_turn else {}),
        },
        performance=performance, status=status, warnings=warnings,
        data={"train": "data/train.jsonl", "heldout": "data/heldout.jsonl", "checkpoints": "checkpoints/epoch-N",
              **({"heldout_turns": "data/heldout_turns.jsonl"} if multi_turn else {})},
        versions=library_versions(), environment=environment or {}, resumes=resumes or [],
        rerun="lm-eval-baking bake with every `config` value as its --flag (and the same question file, checked by "
              "questions.sha256) on the base with base_model.sha256, same torch_threads for bitwise equality",
        training=plan.to_record() if plan else None,
    )
