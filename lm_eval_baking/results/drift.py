"""Persona drift with error bars, from baking_persona_drift's per-doc output (`--log_samples`).

A conversation is the unit of evidence: the probes after one conversation's
turns share its history, so they are not independent. Every CI here resamples
whole conversations (`core.stats`):

- adherence after each probed turn: the mean over conversations, with a CI;
- drift = adherence at turns ≤ 5 minus at turns ≥ 25, computed per
  conversation, then averaged, with a CI;
- the trend: the least-squares slope of adherence over turns, with a CI;
- baked − prompted at each turn: paired doc by doc (same conversation, turn and
  probe), with a CI, when both models answered the same docs.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from ..core.stats import RESAMPLES, bootstrap_ci, paired_cluster_comparison, trend
from .samples import read_samples

EARLY_MAX_TURN = 5
LATE_MIN_TURN = 25


def _cluster(doc: dict) -> str:
    return f"{doc.get('persona')}/{doc.get('conversation', 0)}"


def drift_summary(docs: dict[int, dict]) -> dict:
    """persona -> adherence by turn, early, late, drift and trend, each with a CI over conversations.

    `docs` is `results.samples.read_samples(..., keep_doc_fields=("persona", "conversation", "turn"))`.
    """
    by_persona: dict[str, list[dict]] = defaultdict(list)
    for doc in docs.values():
        if isinstance(doc.get("turn"), int) and isinstance(doc.get("adherence"), (int, float)):
            by_persona[str(doc.get("persona"))].append(doc)
    return {persona: _persona_summary(rows) for persona, rows in sorted(by_persona.items())}


def _persona_summary(rows: list[dict]) -> dict:
    conversations = sorted({_cluster(r) for r in rows})
    turns = sorted({r["turn"] for r in rows})
    per_turn = {}
    for turn in turns:
        means = _per_conversation([r for r in rows if r["turn"] == turn])
        per_turn[turn] = _with_ci(means)
    early = _per_conversation([r for r in rows if r["turn"] <= EARLY_MAX_TURN])
    late = _per_conversation([r for r in rows if r["turn"] >= LATE_MIN_TURN])
    both = sorted(set(early) & set(late))
    drift = _with_ci({c: early[c] - late[c] for c in both}) if both else None
    summary = {"conversations": len(conversations), "docs": len(rows), "turns": per_turn,
               "early": _with_ci(early) if early else None, "late": _with_ci(late) if late else None,
               "drift": drift, "drift_per_conversation": {c: early[c] - late[c] for c in both}}
    if len(turns) >= 2 and len(conversations) >= 2:
        slope, ci = trend([r["turn"] for r in rows], [r["adherence"] for r in rows], [_cluster(r) for r in rows],
                          n_boot=RESAMPLES)
        summary["trend_per_turn"] = {"value": slope, "ci": [ci.low, ci.high]}
    return summary


def _per_conversation(rows: list[dict]) -> dict[str, float]:
    groups: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        groups[_cluster(r)].append(float(r["adherence"]))
    return {c: float(np.mean(v)) for c, v in groups.items()}


def _with_ci(values: dict[str, float]) -> dict:
    data = list(values.values())
    ci = bootstrap_ci(data, n_boot=RESAMPLES)
    return {"value": float(np.mean(data)), "ci": [ci.low, ci.high], "conversations": len(data)}


def paired_by_turn(prompted: dict[int, dict], baked: dict[int, dict]) -> dict[int, dict]:
    """turn -> baked − prompted adherence, paired over the docs both answered, with a CI over conversations."""
    shared = [d for d in sorted(set(prompted) & set(baked)) if prompted[d].get("hash") == baked[d].get("hash")
              and isinstance(prompted[d].get("turn"), int) and "adherence" in prompted[d] and "adherence" in baked[d]]
    out = {}
    for turn in sorted({prompted[d]["turn"] for d in shared}):
        ids = [d for d in shared if prompted[d]["turn"] == turn]
        comparison = paired_cluster_comparison([prompted[d]["adherence"] for d in ids],
                                               [baked[d]["adherence"] for d in ids],
                                               [_cluster(prompted[d]) for d in ids], n_boot=RESAMPLES)
        ci = comparison.difference_ci
        out[turn] = {"value": comparison.difference, "ci": [ci.low, ci.high], "p_value": comparison.p_value,
                     "docs": comparison.n, "changed": ci.excludes_zero}
    return out


def adherence_curve(samples_path) -> dict[int, float]:
    """Mean adherence per probed turn from one `samples_baking_persona_drift_*.jsonl` file."""
    docs = read_samples(samples_path, ("turn",))
    by_turn: dict[int, list[float]] = defaultdict(list)
    for doc in docs.values():
        by_turn[doc["turn"]].append(float(doc["adherence"]))
    return {turn: float(np.mean(v)) for turn, v in sorted(by_turn.items())}


def interval_text(entry: dict | None, spec: str = ".2f") -> str:
    if not entry:
        return "–"
    low, high = entry["ci"]
    bounds = "no CI" if not (math.isfinite(low) and math.isfinite(high)) else \
        f"[{format(low, spec)}, {format(high, spec)}]"
    return f"{format(entry['value'], spec)} {bounds}"
