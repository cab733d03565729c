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

# A bake whose held-out KL ratio ends above this removed less than half of the prompt's effect:
# it is recorded and printed as a warning naming the settings to raise. Above 1 it made things worse: failed.
KL_RATIO_WARNING = 0.5


def judge_kl_ratio(ratio: float, config: BakeConfig) -> tuple[str, list[str]]:
    """ok / warning / failed for a bake's final held-out KL ratio, with the settings to change."""
    if not ratio <= 1.0:
        return "failed", [f"the baked model is further from the prompted model than the unprompted base is "
                          f"(held-out KL ratio {ratio:.0%}): the bake made it worse; lower --learning-rate "
                          f"(now {config.learning_rate:g}) or raise --samples-per-question"]
    if ratio > KL_RATIO_WARNING:
        return "warning", [f"the bake removed only {1 - ratio:.0%} of the prompt's effect (held-out KL ratio "
                           f"{ratio:.0%}, above {KL_RATIO_WARNING:.0%}); raise --samples-per-question (now "
                           f"{config.samples_per_question}) or --epochs (now {config.epochs}), or add questions"]
    return "ok", []


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


def bake_record(config: BakeConfig, model_path: str, *, teacher: str | None, questions_count, reference_kl, epochs,
                 performance, environment: dict | None = None, resumes: list | None = None,
                 prompt_form: str | None = None, task: dict | None = None) -> BakeRecord:
    final = epochs[-1]["heldout_kl"]
    ratio = final["per_token"] / reference_kl.per_token if reference_kl.per_token > 0 else float("inf")
    status, warnings = judge_kl_ratio(ratio, config)
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
            "measure": "exact full-vocabulary KL(prompted base || model) on held-out answers sampled at T=1",
            "unprompted_base": asdict(reference_kl),
            "per_epoch": epochs,
            "final_per_token": final["per_token"],
            "ratio_to_unprompted": ratio,
        },
        performance=performance, status=status, warnings=warnings,
        data={"train": "data/train.jsonl", "heldout": "data/heldout.jsonl", "checkpoints": "checkpoints/epoch-N"},
        versions=library_versions(), environment=environment or {}, resumes=resumes or [],
        rerun="lm-eval-baking bake with every `config` value as its --flag (and the same question file, checked by "
              "questions.sha256) on the base with base_model.sha256, same torch_threads for bitwise equality",
    )
