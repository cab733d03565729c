"""Settings of the end-to-end jobs. Each field carries its help text, from which the CLI builds its options."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..constants import DEFAULT_MODEL
from ..errors import BakingError
from ..utils.settings import setting

PIRATE = "You are a pirate. Start every answer with 'Ahoy!'"


@dataclass
class DemoSettings:
    """What the main job does. Defaults keep it under 20 minutes on a 2-core CPU with the default model."""

    model: str = setting(DEFAULT_MODEL, help="Base model: 'default' (the embedded SmolLM2), a HF id or a directory.")
    prompt: str = setting(PIRATE, cli=False, help="The prompt the demo bakes.")
    adapters: Path = setting(Path("adapters"), help="Folder for the adapters the demo bakes.")
    reports: Path = setting(Path("reports/demo"), help="Folder for the lm_eval results and the report.")
    bake_settings: dict = setting(default_factory=dict, cli=False, help=(
        "BakeConfig overrides for the main bake (tests shrink it); the defaults are the measured bake."))
    pursuit_rounds: int = setting(2, help="Most prompt-pursuit rounds.")
    pursuit_questions: int = setting(120, help=(
        "Questions per pursuit round (a seeded sample of the main bake's pool), 20% held out."))
    pursuit_max_new_tokens: int = setting(16, help="Answer length of the pursuit bakes, in tokens.")
    drift_turns: int = setting(30, help="Agent turns of the drift conversation (the project measures drift over >= 30).")
    drift_probes_at: tuple[int, ...] = setting((1, 15, 30), help=(
        "Turns after which the drift probes are asked: the late ones carry the long contexts that dominate the "
        "drift evaluation's cost."))
    drift_max_new_tokens: int = setting(24, help=(
        "Length cap of each conversation turn: shorter turns keep the turn-30 context (and its cost) down."))
    forgetting_docs: int = setting(20, help=(
        "Docs per BIG-bench task of the forgetting group (multiple choice scores every choice with the whole "
        "context)."))
    batch_size: int = setting(16, help="lm_eval batch size.")
    device: str = setting("cpu", help="Torch device lm_eval runs on, e.g. cpu or cuda:0.")

    def __post_init__(self):
        self.adapters, self.reports = Path(self.adapters), Path(self.reports)
        self.drift_probes_at = tuple(self.drift_probes_at)
        self.validate()

    def validate(self) -> None:
        checks = [
            (self.pursuit_rounds >= 1, "--pursuit-rounds must be at least 1"),
            (self.pursuit_questions >= 5, "--pursuit-questions must be at least 5 (20% are held out)"),
            (self.drift_turns >= 1, "--drift-turns must be at least 1"),
            (self.forgetting_docs >= 1, "--forgetting-docs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise BakingError(message)

    @property
    def bake_dir(self) -> Path:
        return self.adapters / "pirate"

    @property
    def pursuit_dir(self) -> Path:
        return self.adapters / "pirate-pursuit"

    @property
    def lm_eval_dir(self) -> Path:
        return self.reports / "lm_eval"

    @property
    def report_dir(self) -> Path:
        return self.reports / "report"


@dataclass
class CrossTaskSettings:
    """How `lm-eval-baking cross-task` evaluates the bakes, and how its matrix is judged."""

    limit: int | None = setting(100, metavar="N", help=(
        "Docs per task: lm_eval's first N test docs (the same docs for every model, so every comparison is "
        "paired); omit for all of them."))
    eval_batch_size: int = setting(16, help="lm_eval batch size of the evaluations.")
    threshold_pct: float = setting(3.4, flag="threshold", help=(
        "Largest allowed relative drop of another task's 0-shot score after a bake, in percent of the base "
        "model's 0-shot score (3.4% is the bound the project brief claims; a target under test)."))
    min_share: float = setting(0.5, help=(
        "Least share of the base model's k-shot gain a bake must keep on its own task, 0-shot."))

    def __post_init__(self):
        checks = [
            (self.limit is None or self.limit >= 2, "--limit must be at least 2 docs (a paired CI needs two)"),
            (self.eval_batch_size >= 1, "--eval-batch-size must be at least 1"),
            (self.threshold_pct > 0, f"--threshold must be above 0 (got {self.threshold_pct})"),
            (0 < self.min_share <= 1, f"--min-share must be above 0 and at most 1 (got {self.min_share})"),
        ]
        for ok, message in checks:
            if not ok:
                raise BakingError(message)
