"""The JSON records of runs built from bakes, typed: each a dataclass whose fields are the file's keys.

    pursuit.json    PursuitRecord   a prompt pursuit: its settings and every round's score
    sequence.json   SequenceRecord  a multi-prompt sequence: its settings and every stage's qualities
    pipeline.json   PipelineRecord  a recipe's run: stages, qualities kept, checks and the verdict
    lm_eval_run.json  LmEvalRunStamp  what an lm_eval run of a pipeline ran: its command and its inputs' hashes
    base_result.json  BaseResultRecord  one base-model result in the shared store: its key and files' hashes

Each record has one save/load pair (`save_pretrained(folder)` / `from_pretrained(folder)`, like
BakeRecord for baking.json), so its writer (compose/, workflows/) and its readers (results/) go through
the same code: the `format` and `format_version` are checked on load (a file written by a newer
lm-eval-baking is refused, one without a version reads as version 1), and keys this version does not
know are kept in `extra`, so reading and writing back loses nothing. Records live here, below every
layer that reads them: results/ may import artifacts/, not compose/ or workflows/.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import ClassVar, TypeVar

from ..constants import (
    BASE_RESULT_FORMAT, BASE_RESULT_RECORD, LM_EVAL_RUN_FORMAT, LM_EVAL_RUN_STAMP, PIPELINE_FORMAT, PIPELINE_RECORD, PURSUIT_FORMAT, PURSUIT_RECORD, SEQUENCE_FORMAT, SEQUENCE_RECORD,
)
from ..errors import BakingError
from ..utils.records import check_format_version
from .manifest import write_owned_json

R = TypeVar("R", bound="JsonRecord")


class JsonRecord:
    """What every record here shares: a dataclass with `extra: dict` last; FILE, FORMAT, VERSION and the
    manifest KIND of the folder it is written into as class attributes."""

    FILE: ClassVar[str]
    FORMAT: ClassVar[str]
    VERSION: ClassVar[int] = 1
    KIND: ClassVar[str]
    FIX: ClassVar[str] = "make it again"
    """How to replace a damaged file: the end of the one-line error."""
    FORMAT_OPTIONAL: ClassVar[bool] = False
    """True for a record first written without `format`: such a file reads as this record."""
    RENAMED: ClassVar[dict[str, str]] = {}
    """Keys renamed without a new format version, {old: new}: a file with the old key reads as the new."""

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        """The file's keys as this version names them (RENAMED; a record with nested renames adds its own)."""
        return {(cls.RENAMED[k] if k in cls.RENAMED and cls.RENAMED[k] not in data else k): v for k, v in data.items()}

    def to_dict(self) -> dict:
        data = {"format": self.FORMAT, "format_version": self.VERSION}
        data.update({f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"})
        return {**self.extra, **data}

    @classmethod
    def from_dict(cls: type[R], data, where: str) -> R:
        found = data.get("format") if isinstance(data, dict) else None
        if not isinstance(data, dict) or (found != cls.FORMAT and not (found is None and cls.FORMAT_OPTIONAL)):
            raise BakingError(f"{where} is not a {cls.FORMAT} record (format {json.dumps(found)}); {cls.FIX}")
        check_format_version(data, cls.VERSION, where)
        data = cls.upgrade(data)
        names = {f.name for f in fields(cls)} - {"extra"}
        extra = {k: v for k, v in data.items() if k not in names and k not in ("format", "format_version")}
        try:
            return cls(**{k: v for k, v in data.items() if k in names}, extra=extra)
        except TypeError:  # a key the record needs is missing
            raise BakingError(f"{where} is damaged (missing {_missing(cls, data)}); {cls.FIX}") from None

    def save_pretrained(self, directory: str | Path) -> None:
        """Written atomically into a folder of ours, and listed in its manifest."""
        write_owned_json(directory, self.KIND, self.FILE, self.to_dict())

    @classmethod
    def from_pretrained(cls: type[R], directory: str | Path) -> R:
        return cls.from_file(Path(directory) / cls.FILE, missing=f"{directory} has no {cls.FILE}")

    @classmethod
    def from_file(cls: type[R], path: str | Path, *, missing: str | None = None) -> R:
        """The record in the file `path`, whatever its name (a copy, a file named on the command line)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            raise BakingError(f"{missing or f'{path} does not exist'}; {cls.FIX}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise BakingError(f"{path} cannot be read ({type(e).__name__}); {cls.FIX}") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_pretrained_or_none(cls: type[R], directory: str | Path) -> R | None:
        """The record, or None when `directory` has none that reads (missing, damaged, foreign, newer)."""
        try:
            return cls.from_pretrained(directory)
        except BakingError:
            return None


def _missing(cls, data: dict) -> str:
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    return ", ".join(name for name in required if name not in data) or "a field"


@dataclass
class PursuitRecord(JsonRecord):
    """pursuit.json: written when a pursuit starts (status running), after every round, and when it is done."""

    FILE: ClassVar[str] = PURSUIT_RECORD
    FORMAT: ClassVar[str] = PURSUIT_FORMAT
    KIND: ClassVar[str] = "pursuit"
    FIX: ClassVar[str] = "rerun `lm-eval-baking pursue` with --overwrite"

    status: str
    """running | done."""
    config: dict
    """The BakeConfig every round bakes, as a dict."""
    settings: dict
    """PursuitSettings as a dict: max_rounds, min_improvement, evaluator."""
    base_model: str
    start: dict | None = None
    """What round 1 started from: {"chain", "reference"[, "target"]} (a pipeline stage's earlier bakes)."""
    score: str | None = None
    """What the scores are, in words."""
    rounds: list[dict] = field(default_factory=list)
    """Round 0 (the unbaked base) and every round baked: compose.pursuit.RoundScore as a dict."""
    stop_reason: str | None = None
    stop_reason_text: str | None = None
    best_round: int | None = None
    pursued: str | None = None
    """The folder (in the pursuit's) of the best round's chain as one adapter, once done."""
    note: str | None = None
    extra: dict = field(default_factory=dict)
    """Keys of the file this version does not know: kept, so reading and writing back loses nothing."""


@dataclass
class SequenceRecord(JsonRecord):
    """sequence.json: written when a sequence starts (status running) and when it is done."""

    FILE: ClassVar[str] = SEQUENCE_RECORD
    FORMAT: ClassVar[str] = SEQUENCE_FORMAT
    KIND: ClassVar[str] = "sequence"
    FIX: ClassVar[str] = "rerun `lm-eval-baking sequence` with --overwrite"

    status: str
    """running | done."""
    config: dict
    """{"prompts", "cycles", "bake" (the BakeConfig without its prompt), "compose"}: what a rerun must match."""
    base_model: str
    quality: str | None = None
    """What the qualities are, in words."""
    references: list[str] = field(default_factory=list)
    """Each prompt's reference folder (held-out answers of the original base with that prompt)."""
    stages: list[dict] = field(default_factory=list)
    """compose.sequence.StageRecord as a dict, per stage."""
    quality_after_own_stage: list | None = None
    quality_after_sequence: list | None = None
    combined: str | None = None
    joint_prompt: str | None = None
    joint_quality: dict | None = None
    behaviour: dict = field(default_factory=dict)
    behaviour_scores: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


@dataclass
class PipelineRecord(JsonRecord):
    """pipeline.json: written when a recipe's run starts (status running) and when it is done."""

    FILE: ClassVar[str] = PIPELINE_RECORD
    FORMAT: ClassVar[str] = PIPELINE_FORMAT
    KIND: ClassVar[str] = "pipeline"
    FIX: ClassVar[str] = "rerun `lm-eval-baking pipeline` with --overwrite"

    status: str
    """running | done."""
    recipe: str | None = None
    """The recipe file, when the recipe came from one."""
    stages: list[dict] = field(default_factory=list)
    """workflows.pipeline's stage records as dicts."""
    compose: dict = field(default_factory=dict)
    quality_kept: dict | None = None
    behaviour: dict = field(default_factory=dict)
    pursued: dict = field(default_factory=dict)
    checks: list[dict] = field(default_factory=list)
    """The validation's checks (results.gate.Check as dicts)."""
    verdict: str | None = None
    seconds: dict = field(default_factory=dict)
    """Wall time per step."""
    adapter: str | None = None
    """The folder (in the run's) of the final adapter, once done."""
    extra: dict = field(default_factory=dict)


@dataclass
class LmEvalRunStamp(JsonRecord):
    """lm_eval_run.json, beside an lm_eval run's results: a rerun with the same stamp reuses them."""

    FILE: ClassVar[str] = LM_EVAL_RUN_STAMP
    FORMAT: ClassVar[str] = LM_EVAL_RUN_FORMAT
    KIND: ClassVar[str] = "lm_eval run"
    FIX: ClassVar[str] = "delete the folder to run lm_eval again"
    FORMAT_OPTIONAL: ClassVar[bool] = True

    command: str
    """The lm_eval command line, with the output path but not the executable or the task path."""
    inputs: dict
    """sha256 of every input file, and of our task definitions ("tasks")."""
    reused_from: str | None = None
    """The base-model store entry the results were copied from (artifacts/base_store.py), when not run here."""
    extra: dict = field(default_factory=dict)


@dataclass
class BaseResultRecord(JsonRecord):
    """base_result.json, in an entry of the base-model store: what the entry's result depends on, and its files.

    An entry is used only when this record reads, its key is the folder's name and the key asked for, its
    inputs are the ones asked for, and every file listed has its sha256 (artifacts/base_store.find)."""

    FILE: ClassVar[str] = BASE_RESULT_RECORD
    FORMAT: ClassVar[str] = BASE_RESULT_FORMAT
    KIND: ClassVar[str] = "base-model result"
    FIX: ClassVar[str] = "delete the store entry; the next run makes it again"

    key: str
    """sha256 of `inputs` as canonical JSON: the entry's folder name."""
    what: str
    """What the entry holds, in words (e.g. "forgetting scores", "lm_eval run")."""
    inputs: dict
    """Everything the result depends on: model identity, settings, task and data hashes, library versions."""
    files: dict
    """Every file of the entry (path inside it -> sha256), this record and the manifest aside."""
    extra: dict = field(default_factory=dict)
