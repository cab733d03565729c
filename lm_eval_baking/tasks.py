"""Glue for our lm_eval tasks (tasks/ at the repository root).

lm_eval imports the functions named by `!function lm_eval_baking.tasks.X`
in the task YAMLs; everything else about a task lives in its YAML.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from .errors import BakingError

_HELDOUT_FIELDS = ("question", "answer", "teacher_logprob", "base_logprob", "n_tokens")


def tasks_path() -> Path:
    """The `tasks/` folder: the repository's in a checkout, else the installed copy."""
    candidates = [
        Path(__file__).resolve().parent.parent / "tasks",  # source checkout / editable install
        Path(sys.prefix) / "share" / "lm_eval_baking" / "tasks",  # wheel install (data_files)
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise BakingError("lm-eval-baking's task folder is missing; reinstall with `pip install lm-eval-baking`")


def find_bake(metadata: dict) -> Path:
    """The bake a task scores against: --metadata bake=DIR, else the peft= adapter.

    lm_eval puts --model_args into the task metadata, so a `peft=` adapter is
    checked here like everywhere else (`safety.check_adapter`): safetensors
    only unless `allow_pickle` is in the metadata, and baked on `pretrained=`.
    """
    from .baking import BAKE_RECORD
    from .safety import check_adapter

    explicit = metadata.get("bake")
    adapter = metadata.get("peft")
    candidate = explicit or adapter
    if not candidate:
        raise BakingError(
            "this task needs a bake: pass peft=ADAPTER_DIR in --model_args, or "
            "--metadata '{\"bake\": \"ADAPTER_DIR\"}' when scoring a model without the adapter"
        )
    if not isinstance(candidate, str):
        raise BakingError(f"the bake must be named by a folder path, not {candidate!r}; "
                          "e.g. --metadata '{\"bake\": \"adapters/pirate\"}'")
    if adapter:
        base = metadata.get("pretrained")
        check_adapter(adapter, base_model=base if isinstance(base, str) else None,
                      allow_pickle=str(metadata.get("allow_pickle", "")).lower() in ("1", "true", "yes"))
    path = Path(candidate)
    if not (path / BAKE_RECORD).is_file():
        how = "--metadata bake" if explicit else "the peft= adapter"
        raise BakingError(
            f"{how} {path} has no {BAKE_RECORD}, so it carries no bake data; make one with "
            "`lm-eval-baking bake`, or name the bake it came from with --metadata '{\"bake\": \"DIR\"}'"
        )
    return path


def mckl_dataset(**metadata):
    """custom_dataset for baking_mckl: the bake's held-out trajectories with their teacher log-probs."""
    import datasets

    from .io import read_jsonl

    path = find_bake(metadata) / "data" / "heldout.jsonl"
    if not path.is_file():
        raise BakingError(f"{path} is missing; re-run the bake (`lm-eval-baking bake ... --overwrite`)")
    rows = read_jsonl(path)
    for line_no, row in enumerate(rows, 1):
        problem = _heldout_row_problem(row)
        if problem:
            raise BakingError(f"{path}: row {line_no} {problem}; re-run the bake (`lm-eval-baking bake ... --overwrite`)")
    if not rows:
        raise BakingError(f"{path} is empty; re-run the bake (`lm-eval-baking bake ... --overwrite`)")
    return {"test": datasets.Dataset.from_list([{f: row[f] for f in _HELDOUT_FIELDS} for row in rows])}


def _heldout_row_problem(row) -> str | None:
    """What is wrong with one row of data/heldout.jsonl (None when it can be scored)."""
    if not isinstance(row, dict):
        return "is not a JSON object"
    missing = [f for f in _HELDOUT_FIELDS if f not in row]
    if missing:
        return f"lacks {missing}"
    if not isinstance(row["question"], str) or not isinstance(row["answer"], str):
        return "needs question and answer strings"
    for name in ("teacher_logprob", "base_logprob"):
        value = row[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value > 0:
            return f"has {name} {value!r}, not a log-probability (a finite number ≤ 0)"
    n_tokens = row["n_tokens"]
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        return f"has n_tokens {n_tokens!r}, not a positive whole number"
    return None


def mckl_process_results(doc: dict, results: list) -> dict:
    """Per-doc KL of the model under test, and of the unprompted base for the quality score."""
    (model_logprob, _is_greedy), = results
    kl_sequence = doc["teacher_logprob"] - model_logprob
    base_kl_sequence = doc["teacher_logprob"] - doc["base_logprob"]
    return {
        "kl_per_token": kl_sequence / doc["n_tokens"],
        "kl_per_sequence": kl_sequence,
        "quality": (kl_sequence / doc["n_tokens"], base_kl_sequence / doc["n_tokens"]),
    }


def quality_score(items: list[tuple[float, float]]) -> float:
    """1 - KL(model) / KL(unprompted base): the share of the prompt's effect captured."""
    model_kl = sum(m for m, _ in items)
    base_kl = sum(b for _, b in items)
    if base_kl == 0:
        return float("nan")  # the prompt changed nothing on these answers: no share to capture
    return 1.0 - model_kl / base_kl
