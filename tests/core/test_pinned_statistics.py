"""Outputs of the statistics pinned bit for bit: a refactor (or a library swapped in) must not move them.

`tests/core/pinned_statistics.json` holds what the code gave before core.verdicts became the one home of the
Check record and the docs-to-resolve rule, and before scipy took over McNemar's p. It was written by running
this file on that code (`PYTHONPATH=/path/to/old/checkout python tests/core/test_pinned_statistics.py --write`);
`current_outputs` only calls what both versions have.

Every value must be equal, except the changes made on purpose, each asserted explicitly below:
- McNemar's p comes from scipy.stats.binomtest, which rounds in floating point where the old exact integer
  tail was correctly rounded: p-values (and Holm's p built on them) may differ in the last bits, never by
  more than 1e-13 relative; no verdict or CI depends on them.
- judge_bound (the `check` gate) asked for fewer docs than it already had when the CI was lopsided; it now
  asks for at least one more, as `judge` always did.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from lm_eval_baking.core.stats import (
    bonferroni_confidence, compare_paired, docs_needed, exact_difference_ci, holm, mcnemar_exact,
    minimum_detectable_difference, paired_cluster_comparison,
)
from lm_eval_baking.core.verdicts import judge, judge_bound
from lm_eval_baking.results.cross_task import judge_report
from lm_eval_baking.results.cross_task_record import CrossTaskRecord
from lm_eval_baking.results.forgetting import ForgettingRecord, rebuild_report

PINS = Path(__file__).with_name("pinned_statistics.json")
# The per-doc scores of bench/results/gate_calibration.json (the forgetting report in it) and of
# bench/results/cross_task_fewshot/cross_task.json, copied so that a bench rerun cannot move the pins.
INPUTS = Path(__file__).with_name("pinned_statistics_inputs.json")
SPLITS = [(0, 10), (6, 0), (3, 1), (18, 8), (15, 2), (28, 3), (40, 60), (200, 150), (1, 1), (0, 0), (7, 9)]
BOUNDS = [  # (value, ci, bound, limit, docs)
    (0.82, (0.78, 0.86), "min", 0.8, 50),
    (0.9, (0.79, 0.95), "min", 0.8, 100),  # lopsided: asked for 64 of 100 docs
    (0.05, (0.0, 0.3), "max", 0.1, 40),
    (0.3, (0.25, 0.33), "max", 0.31, 7),
    (0.5, (0.1, 0.9), "min", 0.6, None),
]
CHANGED_ON_PURPOSE = {"bound 1": ["INCONCLUSIVE", "about 101 docs would resolve it"]}


def _datasets() -> dict:
    rng = np.random.default_rng(26)
    base = (rng.random(240) < 0.6).astype(float)
    other = np.where(rng.random(240) < 0.12, 1 - base, base)
    x = rng.normal(0.5, 0.2, 150)
    return {"binary": (base, other, None), "continuous": (x, x + rng.normal(-0.02, 0.1, 150), None),
            "clustered": (x[:60], x[:60] + rng.normal(0.01, 0.1, 60), [i // 5 for i in range(60)])}


def _plain(value):
    return json.loads(json.dumps(value))


def current_outputs() -> dict:
    out = {f"mcnemar {b} {c}": mcnemar_exact(b, c) for b, c in SPLITS}
    for split, n, confidence in (((6, 0), 100, bonferroni_confidence(0.95, 8)), ((3, 7), 50, 0.95),
                                 ((18, 8), 1276, 0.95), ((0, 0), 10, 0.95)):
        ci = exact_difference_ci(split, n, confidence)
        out[f"exact ci {split} {n}"] = [ci.low, ci.high]
    for name, (a, b, clusters) in _datasets().items():
        for confidence in (0.95, bonferroni_confidence(0.95, 8)):
            c = (compare_paired(a, b, n_boot=500, seed=3, confidence=confidence) if clusters is None else
                 paired_cluster_comparison(a, b, clusters, n_boot=500, seed=3, confidence=confidence))
            out[f"compare {name} {confidence}"] = c.to_dict()
            out[f"mde {name} {confidence}"] = c.minimum_detectable_difference()
            for threshold, relative, higher in ((0.034, True, True), (0.02, False, True), (0.01, False, False)):
                out[f"judge {name} {confidence} {threshold} {relative} {higher}"] = judge(
                    c, threshold, relative=relative, higher_is_better=higher).to_dict()
    for i, (value, ci, bound, limit, docs) in enumerate(BOUNDS):
        verdict, note = judge_bound(value, ci, bound, limit, docs)
        out[f"bound {i}"] = [verdict.value, note]
    powers = ((0.3, 0.01, 0.05, 0.8), (0.45, 0.017, 0.05, 0.8), (1.0, 0.1, 0.01, 0.9), (0.2, 0.3, 0.05, 0.8))
    out["docs_needed"] = [docs_needed(sd, effect, alpha, power) for sd, effect, alpha, power in powers]
    out["holm"] = holm([0.01, 0.04, 0.03, 0.005, 0.5, 0.04])
    stored = json.loads(INPUTS.read_text())
    out["forgetting"] = rebuild_report(ForgettingRecord.from_dict(stored["forgetting"], str(INPUTS))).per_adapter
    out["cross_task"] = judge_report(CrossTaskRecord.from_dict(stored["cross_task"], str(INPUTS)))
    return _plain(out)


def _is_p_value(path: str) -> bool:
    """McNemar's p, and Holm's p built on it: the only outputs allowed to move (in the last bits)."""
    top, last = path.split("/")[0].split("[")[0], path.split("/")[-1].split("[")[0]
    return top.startswith("mcnemar") or top == "holm" or last in ("p_value", "p_holm", "p")


def _differences(old, new, path=""):
    if isinstance(old, dict) and isinstance(new, dict) and old.keys() == new.keys():
        return [d for k in old for d in _differences(old[k], new[k], f"{path}/{k}" if path else k)]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in _differences(a, b, f"{path}[{i}]")]
    return [] if old == new or (old != old and new != new) else [(path, old, new)]


def test_statistics_are_bitwise_what_they_were():
    old, new = json.loads(PINS.read_text()), current_outputs()
    for key, value in CHANGED_ON_PURPOSE.items():
        assert old[key] != value and new[key] == value, key
        old[key] = value
    mismatched = []
    for path, before, after in _differences(old, new):
        close = isinstance(before, float) and math.isclose(before, after, rel_tol=1e-13, abs_tol=0.0)
        if not (_is_p_value(path) and close):
            mismatched.append(f"{path}: {before!r} -> {after!r}")
    assert not mismatched, "\n".join(mismatched[:20])


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    PINS.write_text(json.dumps(current_outputs(), indent=1, sort_keys=True) + "\n")
