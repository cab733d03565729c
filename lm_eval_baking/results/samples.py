"""lm_eval's per-doc output (`--log_samples`): what makes a comparison paired.

lm_eval writes `samples_<task>_<stamp>.jsonl` beside `results_<stamp>.json`,
one row per doc (and filter) with the doc, its `doc_id`, a `doc_hash` and each
metric's per-doc value. Two runs are compared doc by doc over the docs whose
`doc_id` and `doc_hash` agree: the same question, answered by both models.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..utils.jsonl import split_lines
from .results_files import is_number


class SamplesError(Exception):
    """A samples file that cannot be used (the report lists it as skipped)."""


def samples_file(results_path: Path, task: str) -> Path:
    stamp = results_path.stem.removeprefix("results_")
    return results_path.with_name(f"samples_{task}_{stamp}.jsonl")


def read_samples(path: Path, keep_doc_fields: tuple[str, ...] = ()) -> dict[int, dict]:
    """doc_id -> {"hash": doc_hash, METRIC: value, ..., FIELD: doc[FIELD] for FIELD in keep_doc_fields}.

    Only the first filter's row of each doc is kept (the "none" filter when there is one). Numeric metric
    values only; a metric that is a list (drift's (bucket, score) pair) is kept as it is.
    """
    docs: dict[int, dict] = {}
    for _, row in _rows(path):
        doc_id = row["doc_id"]
        if doc_id in docs and row.get("filter") != "none":
            continue
        docs[doc_id] = _entry(row, keep_doc_fields)
    return docs


def read_samples_by_filter(path: Path, keep_doc_fields: tuple[str, ...] = ()) -> dict[str, dict[int, dict]]:
    """filter -> doc_id -> the entry `read_samples` gives, for every filter (gsm8k's strict-match and
    flexible-extract score the same docs twice). A doc_id twice under one filter is a damaged file."""
    by_filter: dict[str, dict[int, dict]] = {}
    for line_no, row in _rows(path):
        docs = by_filter.setdefault(str(row.get("filter", "none")), {})
        if row["doc_id"] in docs:
            raise SamplesError(f"line {line_no} repeats doc_id {row['doc_id']} under filter {row.get('filter')!r}")
        docs[row["doc_id"]] = _entry(row, keep_doc_fields)
    return by_filter


def _rows(path: Path):
    """(line number, row) of every non-empty line; a row must be an object with a whole doc_id."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SamplesError(f"unreadable ({getattr(e, 'strerror', None) or type(e).__name__})") from None
    for line_no, line in enumerate(split_lines(text), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise SamplesError(f"line {line_no} is not valid JSON") from None
        if not isinstance(row, dict) or not isinstance(row.get("doc_id"), int) or isinstance(row.get("doc_id"), bool):
            raise SamplesError(f"line {line_no} has no whole doc_id")
        yield line_no, row


def _entry(row: dict, keep_doc_fields: tuple[str, ...]) -> dict:
    metrics = row.get("metrics") if isinstance(row.get("metrics"), list) else []
    entry = {"hash": row.get("doc_hash")}
    for metric in metrics:
        if not isinstance(metric, str):  # a damaged file's metric name can be any JSON, unhashable too
            continue
        value = row.get(metric)
        if is_number(value) or isinstance(value, list):
            entry[metric] = value
    doc = row.get("doc") if isinstance(row.get("doc"), dict) else {}
    entry.update({f: doc.get(f) for f in keep_doc_fields})
    return entry


def paired_values(base: dict[int, dict], other: dict[int, dict], metric: str) -> tuple[list[int], list, list]:
    """(doc ids, base values, other values) of `metric` over the docs both runs answered (same id and hash)."""
    ids = sorted(d for d in set(base) & set(other)
                 if base[d].get("hash") == other[d].get("hash") and metric in base[d] and metric in other[d])
    return ids, [base[d][metric] for d in ids], [other[d][metric] for d in ids]
