"""Settings of the workflows that the CLI exposes as options (the pipeline's settings come from its recipe)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.verdicts import MAX_FORGETTING_DROP_PCT, check_forgetting_drop
from ..errors import BakingError
from ..results.settings import DEFAULT_MIN_SHARE
from ..utils.settings import in_range, setting


@dataclass
class CrossTaskSettings:
    """How `lm-eval-baking cross-task` evaluates the bakes, and how its matrix is judged."""

    limit: int | None = setting(100, metavar="N", help=(
        "Docs per task: lm_eval's first N test docs (the same docs for every model, so every comparison is "
        "paired); omit for all of them."))
    eval_batch_size: int = setting(16, help="lm_eval batch size of the evaluations.")
    max_forgetting_drop_pct: float = setting(MAX_FORGETTING_DROP_PCT, help=(
        "Largest allowed relative drop of another task's 0-shot score after a bake, in percent of the base "
        f"model's 0-shot score ({MAX_FORGETTING_DROP_PCT}% is the bound the project brief claims; a target under "
        "test)."))
    min_share: float = setting(DEFAULT_MIN_SHARE, help=(
        "Least share of the base model's k-shot gain a bake must keep on its own task, 0-shot."))
    reuse_base: bool = setting(True, help=(
        "Reuse the base model's 0-shot and k-shot per-doc scores stored by an earlier run with the same model "
        "weights, task files, task data, settings and library versions (the base-model store: "
        "$LM_EVAL_BAKING_BASE_STORE, else <cache>/lm_eval_base), and store the ones measured; --no-reuse-base "
        "scores the base model again and stores nothing."))

    def __post_init__(self):
        checks = [
            (self.limit is None or self.limit >= 2, "--limit must be at least 2 docs (a paired CI needs two)"),
            (self.eval_batch_size >= 1, "--eval-batch-size must be at least 1"),
            (in_range(self.min_share, above=0, high=1), f"--min-share must be above 0 and at most 1 (got {self.min_share})"),
        ]
        for ok, message in checks:
            if not ok:
                raise BakingError(message)
        check_forgetting_drop(self.max_forgetting_drop_pct, "--max-forgetting-drop-pct")


@dataclass
class PipelineSettings:
    """How `lm-eval-baking pipeline` runs a recipe (what it bakes and checks comes from the recipe itself)."""

    recipe: Path = setting(positional=True, help="a YAML (or JSON) recipe; see recipes/demo.yaml")
    overwrite: bool = setting(False, help="re-bake and re-evaluate everything instead of reusing finished steps")
    quiet: bool = setting(False, help="no progress bars")
