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
    drift_persona: str = setting("pirate_speech", help=(
        "Persona whose scorer measures drift: pirate_speech counts pirate words anywhere in an answer, because the "
        "default model stops opening with 'Ahoy' once a conversation has started."))
    drift_turns: int = setting(30, help="Agent turns of each drift conversation (the project measures drift over >= 30).")
    drift_conversations: int = setting(5, help=(
        "Drift conversations (each with its own opener and topics): the CIs resample whole conversations."))
    drift_probes_at: tuple[int, ...] = setting((1, 30), help=(
        "Turns after which the drift probes are asked: the late ones carry the long contexts that dominate the "
        "drift evaluation's cost."))
    drift_sampled_answers: int = setting(1, help="Answers sampled at T=1 per drift probe, besides the greedy one.")
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
            (self.drift_conversations >= 1, "--drift-conversations must be at least 1"),
            (self.drift_sampled_answers >= 0, "--drift-sampled-answers must be 0 or more"),
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
