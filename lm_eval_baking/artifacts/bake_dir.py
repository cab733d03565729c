"""The bake folder: the one reader and writer of everything a bake leaves on disk.

    adapters/NAME/
        adapter_config.json, adapter_model.safetensors   the standard PEFT adapter
        baking.json                                      the BakeRecord below
        README.md                                        a model card
        data/train.jsonl, data/heldout.jsonl             trajectories trained and validated on
        data/conversations.jsonl, data/drift_docs.jsonl  persona-drift conversations and lm_eval docs
        checkpoints/epoch-N/                             the adapter after each epoch

A record's `kind` says what made the folder: a bake, a chain export (pursuit
rounds or sequence stages as one adapter), a strength export (half-baking), or a
reference (held-out answers of a prompted base, no adapter). Every kind keeps
held-out data in the same place, so `baking_mckl` scores any of them.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..constants import (
    BAKE_FORMAT, BAKE_FORMAT_VERSION, BAKE_RECORD, CHECKPOINTS_DIR, CONVERSATIONS, DRIFT_DOCS, HELDOUT_DATA,
    MODEL_CARD, TRAIN_DATA,
)
from ..core.harness import LmEvalRun
from ..core.hub import hub_model_id
from ..errors import BakingError
from ..utils.atomic import write_json, write_jsonl, write_text
from ..utils.jsonl import read_json_object, read_jsonl
from ..utils.records import check_format_version
from ..utils.text import quoted
from .manifest import owned_file

KINDS = ("bake", "chain_export", "strength_export", "reference")
# File keys that differ from the field names (kept so records written before BakeRecord still read).
_FILE_KEYS = {"chain": "pursuit_export", "strength": "half_baking"}
_KIND_ALIASES = {"pursuit_export": "chain_export"}
HELDOUT_FIELDS = ("question", "answer", "teacher_logprob", "base_logprob", "n_tokens")


@dataclass
class BakeRecord:
    """baking.json: what was baked, on which exact base, with which settings and result."""

    kind: str
    """bake | chain_export | strength_export | reference."""
    config: dict
    """The BakeConfig as a dict (for exports: the first bake's, whose held-out data the folder carries)."""
    base_model: dict
    """{"name_or_path", "sha256" of its weights, "config_sha256"}: checked before the adapter is loaded anywhere."""
    prompt_sha256: str | None = None
    prompt_form: str | None = None
    """chat | text: how the prompt sat before the question (BakePrompt); lm_eval must build contexts the same way."""
    questions: dict | None = None
    kl: dict | None = None
    """Held-out KL: unprompted base, per epoch, final, ratio (bakes only)."""
    performance: dict | None = None
    status: str = "ok"
    """ok | warning | failed: a bake whose KL ratio says it did not work is not silently 'ok'."""
    warnings: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    resumes: list = field(default_factory=list)
    chain: dict | None = None
    """chain_export: how the rounds were combined, and each round's source, prompt, rank and scale."""
    strength: dict | None = None
    """strength_export: the strength s, the source bake and epoch."""
    task: dict | None = None
    """A bake of an lm_eval task's few-shot prompt: the task, its version, config hash and K."""
    training: dict | None = None
    """Bakes: what was asked, the sizes it came to, the LoRA targets it resolved to (training.plan.BakePlan)."""
    teacher: str | None = None
    """sha256 of the adapters merged into the base to make the teacher (pursuit rounds, pipeline stages);
    None when the teacher is the base itself."""
    note: str | None = None
    rerun: str | None = None
    extra: dict = field(default_factory=dict)
    """Keys of the file this version does not know: kept, so reading and writing back loses nothing."""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise BakingError(f"unknown bake record kind {quoted(self.kind)}; one of {', '.join(KINDS)}")

    @property
    def prompt(self):
        return self.config.get("prompt")

    @property
    def base_path(self) -> str:
        return str(self.base_model.get("name_or_path", ""))

    def to_dict(self) -> dict:
        data = {"format": BAKE_FORMAT, "format_version": BAKE_FORMAT_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "extra" and value is not None:
                data[_FILE_KEYS.get(f.name, f.name)] = value
        return {**self.extra, **data}

    @classmethod
    def from_dict(cls, data: dict, where: str = "baking.json") -> "BakeRecord":
        if not isinstance(data, dict) or data.get("format") not in (BAKE_FORMAT, "lm-eval-baking/reference"):
            raise BakingError(f"{where} is not a lm-eval-baking record; re-bake with --overwrite")
        check_format_version(data, BAKE_FORMAT_VERSION, where)
        names = {f.name for f in fields(cls)} - {"extra"}
        by_file_key = {_FILE_KEYS.get(name, name): name for name in names}
        values = {by_file_key[k]: v for k, v in data.items() if k in by_file_key}
        values["kind"] = _KIND_ALIASES.get(values.get("kind", "bake"), values.get("kind", "bake"))
        if data.get("format") == "lm-eval-baking/reference":
            values["kind"] = "reference"
        if not isinstance(values.get("config"), dict) or not isinstance(values.get("base_model"), dict):
            raise BakingError(f"{where} is damaged (no config or base_model object); re-bake with --overwrite")
        extra = {k: v for k, v in data.items() if k not in by_file_key and k not in ("format", "format_version")}
        try:
            return cls(**values, extra=extra)
        except TypeError:
            raise BakingError(f"{where} is damaged; re-bake with --overwrite") from None

    def save_pretrained(self, directory: str | Path) -> None:
        write_json(Path(directory) / BAKE_RECORD, self.to_dict())

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "BakeRecord":
        return cls.from_dict(load_bake_record(directory), str(Path(directory) / BAKE_RECORD))

    @classmethod
    def from_pretrained_or_none(cls, directory: str | Path) -> "BakeRecord | None":
        """The record, or None when `directory` has none that reads (missing, damaged, foreign, newer):
        for readers that must survive any folder (reports, the check of a finished bake to reuse)."""
        try:
            return cls.from_pretrained(directory)
        except BakingError:
            return None


def recorded_base_model(directory: str | Path) -> dict | None:
    """baking.json's `base_model` object, even from a record too damaged (or too new) for BakeRecord: the
    adapter check (artifacts.safety.check_base) needs only this, and must not pass a folder over the rest."""
    record = read_json_object(Path(directory) / BAKE_RECORD)
    base_model = record.get("base_model") if record is not None else None
    return base_model if isinstance(base_model, dict) else None


def load_bake_record(directory: str | Path) -> dict:
    """baking.json of `directory` as a dict; a missing, corrupt or foreign record is one BakingError."""
    path = Path(directory) / BAKE_RECORD
    if not path.is_file():
        raise BakingError(f"{directory} has no {BAKE_RECORD}: it is not a bake; make one with `lm-eval-baking bake`")
    try:
        record = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as e:
        raise BakingError(f"{path} is corrupt ({e.msg}); re-bake with --overwrite") from None
    except (OSError, UnicodeDecodeError, RecursionError) as e:
        raise BakingError(f"{path} cannot be read ({getattr(e, 'strerror', None) or type(e).__name__}); "
                          "re-bake with --overwrite") from None
    if not isinstance(record, dict) or record.get("format") not in (BAKE_FORMAT, "lm-eval-baking/reference"):
        raise BakingError(f"{path} is not a lm-eval-baking record; re-bake with --overwrite")
    return record


class BakeDir:
    """A bake folder's paths and files (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def record_path(self) -> Path:
        return self.path / BAKE_RECORD

    @property
    def heldout_path(self) -> Path:
        return self.path / HELDOUT_DATA

    @property
    def train_path(self) -> Path:
        return self.path / TRAIN_DATA

    def train_rows(self) -> list[dict]:
        """data/train.jsonl: the answers this bake trained on (a later composed stage replays them)."""
        if not self.train_path.is_file():
            raise BakingError(f"{self.train_path} is missing; re-run the bake (`lm-eval-baking bake ... --overwrite`)")
        return read_jsonl(self.train_path)

    @property
    def conversations_path(self) -> Path:
        return self.path / CONVERSATIONS

    @property
    def drift_docs_path(self) -> Path:
        return self.path / DRIFT_DOCS

    def checkpoint(self, epoch: int) -> Path:
        return self.path / CHECKPOINTS_DIR / f"epoch-{epoch}"

    def is_bake(self) -> bool:
        return self.record_path.is_file()

    def record(self) -> BakeRecord:
        return BakeRecord.from_pretrained(self.path)

    def record_or_none(self) -> BakeRecord | None:
        """The record, or None when there is none that reads: for readers that must survive any folder."""
        return BakeRecord.from_pretrained_or_none(self.path)

    # ------------------------------------------------------------------ held-out data

    def heldout_rows(self, fix: str = "re-run the bake (`lm-eval-baking bake ... --overwrite`)") -> list[dict]:
        """data/heldout.jsonl, every row checked: what `baking_mckl` and the quality evaluator score against."""
        path = self.heldout_path
        if not path.is_file():
            raise BakingError(f"{path} is missing; {fix}")
        rows = read_jsonl(path)
        for line_no, row in enumerate(rows, 1):
            problem = heldout_row_problem(row)
            if problem:
                raise BakingError(f"{path}: row {line_no} {problem}; {fix}")
        if not rows:
            raise BakingError(f"{path} is empty; {fix}")
        return rows

    def write_heldout(self, rows) -> None:
        write_jsonl(self.heldout_path, rows)

    def copy_heldout_to(self, destination: Path) -> None:
        if self.heldout_path.is_file():
            target = Path(destination) / HELDOUT_DATA
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.heldout_path, target)

    # ------------------------------------------------------------------ drift data

    def conversations(self) -> list:
        return read_jsonl(self.conversations_path) if self.conversations_path.is_file() else []

    def write_conversations(self, rows) -> None:
        with owned_file(self.path, None, CONVERSATIONS):  # listed in a bake's manifest (a user's adapter has none)
            write_jsonl(self.conversations_path, rows)

    def drift_docs(self) -> list:
        return read_jsonl(self.drift_docs_path)

    def write_drift_docs(self, docs) -> None:
        with owned_file(self.path, None, DRIFT_DOCS):
            write_jsonl(self.drift_docs_path, docs)

    # ------------------------------------------------------------------ writing a bake

    def write_model_card(self, record: BakeRecord) -> None:
        write_text(self.path / MODEL_CARD, model_card(record))


def heldout_row_problem(row) -> str | None:
    """What is wrong with one row of data/heldout.jsonl (None when it can be scored)."""
    if not isinstance(row, dict):
        return "is not a JSON object"
    missing = [f for f in HELDOUT_FIELDS if f not in row]
    if missing:
        return f"lacks {missing}"
    if not isinstance(row["question"], str) or not isinstance(row["answer"], str):
        return "needs question and answer strings"
    for name in ("teacher_logprob", "base_logprob"):
        value = row[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value > 0:
            return f"has {name} {quoted(value)}, not a log-probability (a finite number ≤ 0)"
    n_tokens = row["n_tokens"]
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        return f"has n_tokens {quoted(n_tokens)}, not a positive whole number"
    return None


def model_card(record: BakeRecord) -> str:
    kl = record.kl or {}
    base = record.base_path
    command = LmEvalRun(base=base, adapter="<this directory>", tasks=["baking_mckl"],
                        apply_chat_template=record.prompt_form != "text").shell()
    prompt = record.prompt if isinstance(record.prompt, str) else json.dumps(record.prompt, ensure_ascii=False, indent=1)
    table = ""
    if kl:
        table = f"""
| held-out KL per answer token | value |
| --- | --- |
| prompted base vs unprompted base | {kl['unprompted_base']['per_token']:.4f} |
| prompted base vs this adapter | {kl['final_per_token']:.4f} |
| ratio | {kl['ratio_to_unprompted']:.1%} |
"""
    # base_model is a Hub id or absent, never a local path (core/hub.py); tests/artifacts/test_model_card.py
    # checks the front matter the way huggingface_hub reads it.
    hub_id = hub_model_id((record.config or {}).get("model"), base or None)
    base_model = f"base_model: {hub_id}\n" if hub_id else ""
    return f"""---
library_name: peft
{base_model}pipeline_tag: text-generation
tags: [prompt-baking, lora, lm-eval-baking]
---
# Baked prompt adapter

This LoRA adapter makes the base model behave, **without** the prompt below, as
it does **with** it (Prompt Baking, arXiv 2409.13697).

```text
{prompt}
```
{table}
Evaluate it with lm-evaluation-harness:

```bash
{command}
```

`baking.json` records the prompt, base model hash, every setting and the KL
per epoch; `data/` holds the trajectories it was trained and validated on.
"""
