"""core.verdicts: the Check record and the one rule for the docs that would resolve an INCONCLUSIVE."""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lm_eval_baking.core.stats import Interval, PairedComparison
from lm_eval_baking.core.verdicts import Check, Verdict, docs_to_resolve, judge, judge_bound, resolve_text

SETTINGS = settings(derandomize=True, deadline=None, max_examples=300, database=None)
DOCS = st.integers(1, 100_000)
WIDTH = st.floats(1e-4, 10.0)
GAP = st.floats(1e-4, 10.0) | st.floats(-10.0, -1e-4)


@SETTINGS
@given(DOCS, WIDTH, GAP)
def test_docs_to_resolve_shrinks_the_half_width_to_the_gap_and_asks_for_more(n, half, gap):
    docs = docs_to_resolve(n, half, gap)
    assert docs >= n + 1
    # At 1/sqrt(n) scaling the half-width on `docs` docs is within the gap (up to the 6-place rounding) ...
    assert half * math.sqrt(n / docs) <= abs(gap) * (1 + 1e-6)
    # ... and one doc fewer would not be, unless that is no more than the docs already judged.
    assert docs - 1 <= n or half * math.sqrt(n / (docs - 1)) > abs(gap) * (1 - 1e-6)


def test_docs_to_resolve_has_no_answer_without_docs_a_gap_or_a_finite_width():
    assert docs_to_resolve(50, 0.04, 0.02) == 200 and docs_to_resolve(100, 0.08, -0.1) == 101
    for n, half, gap in ((0, 0.1, 0.1), (None, 0.1, 0.1), (10, math.inf, 0.1), (10, 0.1, 0.0), (10, 0.1, math.nan),
                         (10, 0.1, 1e-320)):
        assert docs_to_resolve(n, half, gap) is None
    assert resolve_text(200) == "about 200 docs would resolve it" and resolve_text(None) == ""


def _comparison(n: int, low: float, high: float, change: float) -> PairedComparison:
    return PairedComparison(n, 0.5, 0.5 + change, change, Interval(low, high, 0.95), None, None, 0.5,
                            "paired-permutation", None, 0.3)


@SETTINGS
@given(DOCS, st.floats(0.001, 0.2), st.floats(0.001, 0.2), st.floats(0.0, 1.0), st.floats(0.001, 0.1))
def test_every_inconclusive_asks_for_more_docs_than_it_has(n, below, above, where, threshold):
    """However lopsided the CI around the bound -threshold, judge and judge_bound ask for n + 1 docs or more."""
    low, high = -threshold - below, -threshold + above
    change = low + where * (high - low)
    judged = judge(_comparison(n, low, high, change), threshold, relative=False)
    assert judged.verdict is Verdict.INCONCLUSIVE
    assert judged.docs_to_resolve is None if change == -threshold else judged.docs_to_resolve >= n + 1
    verdict, note = judge_bound(change, (low, high), "min", -threshold, docs=n)
    assert verdict is Verdict.INCONCLUSIVE
    assert note == resolve_text(docs_to_resolve(n, (high - low) / 2, change + threshold))
    assert change == -threshold or int(note.split()[1]) >= n + 1


def test_the_gate_asks_for_more_docs_than_it_has_even_with_a_lopsided_ci():
    # The CI straddles 0.8 although its half-width (0.08) is below the gap (0.1): n (0.08/0.1)^2 = 64 < 100.
    assert judge_bound(0.9, (0.79, 0.95), "min", 0.8, docs=100) == (Verdict.INCONCLUSIVE, resolve_text(101))


def test_a_check_holds_a_verdict_and_nothing_else():
    check = Check("quality", "pirate", 0.9, (0.85, 0.95), "min", 0.8, Verdict.PASS)
    assert check.verdict == "PASS" and check.passed
    assert asdict(check) == {"metric": "quality", "variant": "pirate", "value": 0.9, "ci": (0.85, 0.95),
                             "bound": "min", "limit": 0.8, "verdict": "PASS", "note": ""}
    assert not Check("kl", "pirate", None, None, "max", 0.1, "FAIL", "missing").passed
    with pytest.raises(ValueError):
        Check("kl", "pirate", 0.1, None, "max", 0.1, "MAYBE")
