"""The paired-statistics core: exact tests against scipy, bootstrap calibration by simulation, verdicts.

Every test is seeded: the simulations are fixed draws, so the tolerances below are checked once
and then hold bit for bit.
"""

from __future__ import annotations

import ast
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from lm_eval_baking.core import stats, verdicts
from lm_eval_baking.core.stats import (
    Interval, PairedComparison, bonferroni_confidence, bootstrap_ci, cluster_bootstrap_ci,
    compare_paired, docs_needed, holm, mcnemar_exact, minimum_detectable_difference,
    paired_cluster_comparison, ratio_quality_ci, trend,
)
from lm_eval_baking.core.verdicts import EXIT_CODES, Judgement, Verdict, combine, false_fail_rate, judge

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = settings(derandomize=True, deadline=None, max_examples=60, database=None)


def paired_binary(n, p_both, p_base_only, p_other_only, seed):
    """0/1 scores of two models on n docs with the given joint probabilities of (right, right) etc."""
    cat = np.random.default_rng(seed).choice(4, size=n, p=[p_both, p_base_only, p_other_only,
                                                           1 - p_both - p_base_only - p_other_only])
    return np.isin(cat, [0, 1]).astype(float), np.isin(cat, [0, 2]).astype(float)


def flip(scores, share, seed, only_right=False):
    """A copy of 0/1 scores with `share` of the answers (or of the right ones) flipped."""
    rng = np.random.default_rng(seed)
    out = scores.copy()
    pool = np.flatnonzero(scores == 1) if only_right else np.arange(scores.size)
    chosen = rng.choice(pool, size=round(share * pool.size), replace=False)
    out[chosen] = 1 - out[chosen]
    return out


def comparison(difference, ci, *, n=1000, base_mean=0.5, relative_ci=None, confidence=0.95):
    """A hand-made PairedComparison, so verdicts can be checked against chosen intervals."""
    rel = None if base_mean == 0 else difference / base_mean
    rel_ci = None if base_mean == 0 else Interval(*(relative_ci or (ci[0] / base_mean, ci[1] / base_mean)), confidence)
    return PairedComparison(n, base_mean, base_mean + difference, difference, Interval(*ci, confidence), rel, rel_ci,
                            0.5, "paired-permutation", None, 0.3)


# --- Interval ---------------------------------------------------------------------------------------

def test_interval_contains_and_excludes_zero():
    assert Interval(-1.0, 2.0, 0.95).contains(0.0) and not Interval(-1.0, 2.0, 0.95).excludes_zero
    assert Interval(0.1, 0.2, 0.95).excludes_zero and Interval(-0.2, -0.1, 0.95).excludes_zero
    assert Interval(0.0, 0.0, 0.95).contains(0.0) and not Interval(0.0, 0.0, 0.95).excludes_zero
    assert not Interval(-math.inf, math.inf, 0.95).excludes_zero
    with pytest.raises(ValueError):
        Interval(1.0, 0.0, 0.95)
    with pytest.raises(ValueError):
        Interval(math.nan, 0.0, 0.95)


# --- McNemar, Holm ----------------------------------------------------------------------------------

def test_mcnemar_exact_matches_the_exact_binomial_tail_and_is_symmetric():
    """mcnemar_exact is scipy's binomtest: checked here against the tail in exact integers, 2 sum_{i<=k} C(n, i) / 2^n."""
    grid = [(b, c) for b in range(0, 41, 3) for c in range(0, 41, 2)] + [(100, 140), (480, 560), (3, 300)]
    for b, c in grid:
        n, k = b + c, min(b, c)
        expected = 1.0 if 2 * k >= n else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
        assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12, abs=1e-300), (b, c)
        assert mcnemar_exact(b, c) == mcnemar_exact(c, b)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(7, 7) == 1.0
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)
    with pytest.raises(ValueError):
        mcnemar_exact(1.5, 3)


def test_holm_hand_worked_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, 1*0.04 = 0.02, 0.03, 0.06, 0.04,
    # made monotone: 0.02, 0.03, 0.06, 0.06; reported in input order.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert holm([]) == []
    assert holm([0.2]) == [0.2]
    for bad in ([0.1, 1.5], [math.nan], [-0.1]):
        with pytest.raises(ValueError):
            holm(bad)


@SETTINGS
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30))
def test_holm_properties(p):
    adjusted = holm(p)
    assert len(adjusted) == len(p)
    assert all(a >= r and a <= 1.0 for a, r in zip(adjusted, p))
    in_sorted_order = [adjusted[i] for i in np.argsort(p, kind="stable")]
    assert all(x <= y for x, y in zip(in_sorted_order, in_sorted_order[1:]))


# --- bootstrap CIs ----------------------------------------------------------------------------------

def test_paired_bootstrap_covers_the_true_difference_near_nominal():
    true_difference = 0.10 - 0.05
    covered = 0
    for k in range(200):
        base, other = paired_binary(300, 0.5, 0.05, 0.10, seed=k)
        covered += compare_paired(base, other, n_boot=1000, seed=k).difference_ci.contains(true_difference)
    assert 0.90 <= covered / 200 <= 0.99


def test_bootstrap_width_shrinks_as_one_over_sqrt_n():
    x = np.random.default_rng(3).normal(size=1600)
    small, large = bootstrap_ci(x[:400]), bootstrap_ci(x)
    ratio = (small.high - small.low) / (large.high - large.low)
    assert 1.7 <= ratio <= 2.3
    assert small.contains(float(x[:400].mean())) and large.confidence == 0.95


def test_identical_inputs_give_a_zero_width_interval_at_zero():
    base = np.random.default_rng(4).integers(0, 2, size=500).astype(float)
    result = compare_paired(base, base)
    assert (result.difference_ci.low, result.difference_ci.high) == (0.0, 0.0)
    assert (result.relative_ci.low, result.relative_ci.high) == (0.0, 0.0)
    assert not result.difference_ci.excludes_zero and not result.relative_ci.excludes_zero
    assert result.p_value == 1.0 and result.discordant == (0, 0) and result.sd_difference == 0.0
    assert judge(result, 0.01, relative=True).verdict is Verdict.PASS
    continuous = np.random.default_rng(5).normal(size=300)
    same = compare_paired(continuous, continuous)
    assert (same.difference_ci.low, same.difference_ci.high, same.p_value) == (0.0, 0.0, 1.0)


def test_bootstrap_ci_of_a_constant_and_of_one_value():
    assert bootstrap_ci([2.5] * 10) == Interval(2.5, 2.5, 0.95)
    assert bootstrap_ci([1.0]) == Interval(-math.inf, math.inf, 0.95)
    assert bootstrap_ci([1.0, 3.0], confidence=0.9).confidence == 0.9


def test_difference_ci_is_the_bootstrap_ci_of_the_per_doc_differences():
    rng = np.random.default_rng(6)
    base, other = rng.normal(size=700), rng.normal(size=700)
    assert compare_paired(base, other, seed=9).difference_ci == bootstrap_ci(other - base, seed=9)


def test_relative_ci_comes_from_the_same_resamples():
    base, other = paired_binary(1500, 0.55, 0.08, 0.03, seed=7)
    result = compare_paired(base, other)
    assert result.relative_change == pytest.approx(result.difference / result.base_mean)
    # Dividing every resampled difference by a resampled base mean near the observed one.
    ratio_low = result.relative_ci.low * result.base_mean
    assert ratio_low == pytest.approx(result.difference_ci.low, rel=0.15)
    assert result.relative_ci.high < 0 and result.difference_ci.high < 0


def test_relative_ci_is_unbounded_when_the_base_mean_often_resamples_to_zero():
    base = np.zeros(40)
    base[0] = 1.0
    result = compare_paired(base, np.ones(40))
    assert result.relative_ci.high == math.inf  # ~37% of resamples miss the one right answer
    assert compare_paired(np.zeros(5), np.ones(5)).relative_ci is None


def test_ratio_quality_ci():
    rng = np.random.default_rng(8)
    base_kl = rng.gamma(2.0, 0.5, size=800)
    model_kl = 0.3 * base_kl * rng.uniform(0.5, 1.5, size=800)
    ci = ratio_quality_ci(model_kl, base_kl)
    quality = 1 - model_kl.sum() / base_kl.sum()
    assert ci.contains(quality) and ci.contains(0.7) and ci.high - ci.low < 0.05
    assert ratio_quality_ci(base_kl, base_kl) == Interval(0.0, 0.0, 0.95)
    assert ratio_quality_ci([0.1], [0.2]) == Interval(-math.inf, math.inf, 0.95)
    with pytest.raises(ValueError, match="same docs"):
        ratio_quality_ci([0.1, 0.2], [0.2])


# --- compare_paired ---------------------------------------------------------------------------------

def test_binary_scores_use_mcnemar_with_the_right_discordant_counts():
    base = [1, 1, 1, 1, 0, 0, 0, 1, 0, 1]
    other = [1, 0, 0, 1, 1, 0, 0, 0, 0, 1]
    result = compare_paired(base, other)
    assert result.test == "mcnemar-exact"
    assert result.discordant == (3, 1)  # docs 1, 2, 7 lost; doc 4 gained
    assert result.p_value == mcnemar_exact(3, 1)
    assert (result.n, result.base_mean, result.other_mean) == (10, 0.6, 0.4)
    assert result.difference == pytest.approx(-0.2) and result.relative_change == pytest.approx(-1 / 3)
    assert compare_paired([True, False], [True, True]).discordant == (0, 1)


def test_exact_difference_ci_maps_clopper_pearson_and_agrees_with_mcnemar():
    ci = stats.exact_difference_ci((3, 7), 50, 0.95)  # 10 discordant of 50; c = 7
    pi = binomtest(7, 10).proportion_ci(0.95, method="exact")
    assert ci.low == pytest.approx(10 / 50 * (2 * pi.low - 1)) and ci.high == pytest.approx(10 / 50 * (2 * pi.high - 1))
    assert stats.exact_difference_ci((0, 0), 50, 0.95) == Interval(0.0, 0.0, 0.95)
    for b in range(0, 13):
        for c in range(0, 13):
            for confidence in (0.95, bonferroni_confidence(0.95, 8)):
                excludes = stats.exact_difference_ci((b, c), 100, confidence).excludes_zero
                assert excludes == (mcnemar_exact(b, c) < 1 - confidence), (b, c, confidence)


def test_few_discordant_docs_are_not_called_a_change_the_exact_test_does_not_see():
    # Measured on the pirate bake (arithmetic_1_digit_multiplication): 6 docs lost, none gained, of 100.
    # McNemar's p is 0.031, above the 8-task Bonferroni level 0.00625; the plain percentile bootstrap's
    # 99.4% CI was [-0.13, -0.01] and the gate FAILed the task on it.
    base = np.array([1.0] * 26 + [0.0] * 74)
    other = base.copy()
    other[:6] = 0.0
    level = bonferroni_confidence(0.95, 8)
    result = compare_paired(base, other, confidence=level)
    assert result.p_value == pytest.approx(2 / 2 ** 6)
    assert result.difference_ci.contains(0.0) and result.relative_ci.contains(0.0)
    assert judge(result, 0.034, relative=True).verdict != Verdict.FAIL
    # At the plain 95% level the exact test does reject, and so does the CI.
    assert compare_paired(base, other).difference_ci.excludes_zero


@settings(derandomize=True, deadline=None, max_examples=200, database=None)
@given(st.integers(2, 200), st.floats(0.0, 0.29), st.floats(0.0, 0.29), st.integers(0, 2 ** 31),
       st.sampled_from([0.95, 0.99, 0.99375]))
def test_a_binary_ci_never_calls_a_change_mcnemar_does_not(n, p_lost, p_gained, seed, confidence):
    base, other = paired_binary(n, 0.4, p_lost, p_gained, seed)
    result = compare_paired(base, other, confidence=confidence)
    if result.difference_ci.excludes_zero:
        assert result.p_value < 1 - confidence


def test_continuous_scores_use_the_paired_permutation_test():
    rng = np.random.default_rng(10)
    base = rng.normal(size=400)
    shifted = compare_paired(base, base + 0.3 + rng.normal(scale=0.5, size=400))
    null = compare_paired(base, base + rng.normal(scale=0.5, size=400))
    assert shifted.test == null.test == "paired-permutation" and shifted.discordant is None
    assert shifted.p_value == pytest.approx(1 / 2001) and shifted.difference_ci.excludes_zero
    assert null.p_value > 0.05 and not null.difference_ci.excludes_zero
    # Few docs: all 2**3 sign patterns are enumerated, only all-plus and all-minus reach |6|.
    assert compare_paired([0.0, 0.0, 0.0], [1.0, 2.0, 3.0]).p_value == 0.25
    assert compare_paired([0.5, 0.5], [0.5, 0.5]).p_value == 1.0


def test_bad_inputs_are_one_line_value_errors():
    cases = [
        (([1, 0, 1], [1, 0]), "same docs"),
        (([], []), "empty"),
        (([1.0, math.nan], [1.0, 0.0]), "NaN/inf"),
        (([1.0, 0.0], [1.0, math.inf]), "NaN/inf"),
        (([[1.0], [0.0]], [1.0, 0.0]), "1-D"),
        ((["a", "b"], [1.0, 0.0]), "numbers"),
        ((None, [1.0]), "numbers"),
    ]
    for (base, other), message in cases:
        with pytest.raises(ValueError, match=message) as error:
            compare_paired(base, other)
        assert "\n" not in str(error.value)
    for kwargs in ({"n_boot": 0}, {"confidence": 1.0}, {"confidence": 0.0}):
        with pytest.raises(ValueError):
            compare_paired([1, 0], [1, 1], **kwargs)


def test_a_single_doc_can_never_be_a_change_or_a_pass():
    result = compare_paired([1.0], [0.0])
    assert result.difference_ci == Interval(-math.inf, math.inf, 0.95) and not result.difference_ci.excludes_zero
    assert result.relative_ci == Interval(-math.inf, math.inf, 0.95)
    assert result.sd_difference == 0.0 and result.minimum_detectable_difference() == math.inf
    for relative in (True, False):
        verdict = judge(result, 0.5, relative=relative)
        assert verdict.verdict is Verdict.INCONCLUSIVE and verdict.docs_to_resolve is None


def test_to_dict_is_json_able():
    base, other = paired_binary(200, 0.5, 0.1, 0.05, seed=11)
    out = compare_paired(base, other).to_dict()
    assert set(out["difference_ci"]) == {"low", "high", "confidence"}
    assert isinstance(out["discordant"], list)
    assert json.loads(json.dumps(out)) == out
    verdict = judge(compare_paired(base, other), 0.05, relative=False).to_dict()
    assert verdict["verdict"] in {"PASS", "FAIL", "INCONCLUSIVE"} and json.loads(json.dumps(verdict)) == verdict


# --- MDE, docs_needed -------------------------------------------------------------------------------

def test_minimum_detectable_difference_has_the_stated_power_continuous():
    n = 200
    effect = minimum_detectable_difference(1.0, n)
    d = np.random.default_rng(12).normal(effect, 1.0, size=(4000, n))
    z = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    assert abs(np.mean(np.abs(z) > 1.959963984540054) - 0.8) < 0.03


def test_minimum_detectable_difference_has_the_stated_power_for_mcnemar():
    n, discordant = 1000, 0.10
    effect = 0.02
    for _ in range(50):  # the sd of 0/1 differences depends on the effect itself: fixed point
        effect = minimum_detectable_difference(math.sqrt(discordant - effect ** 2), n)
    counts = np.random.default_rng(13).multinomial(
        n, [discordant / 2 - effect / 2, discordant / 2 + effect / 2, 1 - discordant], size=1000)
    power = np.mean([mcnemar_exact(int(b), int(c)) < 0.05 for b, c, _ in counts])
    assert 0.74 <= power <= 0.86  # the exact conditional test is slightly conservative


def test_minimum_detectable_difference_edges():
    assert minimum_detectable_difference(1.0, 1) == math.inf
    assert minimum_detectable_difference(0.0, 100) == 0.0
    assert minimum_detectable_difference(1.0, 400) == pytest.approx(2.8015852 / 20, rel=1e-6)
    assert minimum_detectable_difference(1.0, 100, alpha=0.01) > minimum_detectable_difference(1.0, 100)
    for args in ((-1.0, 10), (math.nan, 10), (1.0, 10, 0.0), (1.0, 10, 0.05, 1.0)):
        with pytest.raises(ValueError):
            minimum_detectable_difference(*args)


@SETTINGS
@given(st.floats(0.01, 5.0), st.floats(0.001, 2.0), st.floats(0.001, 0.2), st.floats(0.5, 0.99))
def test_docs_needed_inverts_the_mde(sd, effect, alpha, power):
    n = docs_needed(sd, effect, alpha, power)
    assert n >= 2 and docs_needed(sd, -effect, alpha, power) == n
    assert minimum_detectable_difference(sd, n, alpha, power) <= effect * (1 + 1e-12)
    if n > 2:
        assert minimum_detectable_difference(sd, n - 1, alpha, power) > effect


def test_docs_needed_edges():
    assert docs_needed(0.3, 0.0) is None
    assert docs_needed(0.0, 0.1) == 2
    assert docs_needed(1.0, 0.1) == math.ceil((2.8015852 / 0.1) ** 2)


# --- judge ------------------------------------------------------------------------------------------

def test_judge_absolute_pass_fail_inconclusive():
    passing = judge(comparison(-0.01, (-0.02, 0.0)), 0.03, relative=False)
    failing = judge(comparison(-0.065, (-0.08, -0.05)), 0.03, relative=False)
    unsure = judge(comparison(-0.02, (-0.05, 0.01)), 0.03, relative=False)
    assert passing.verdict is Verdict.PASS and passing.docs_to_resolve is None
    assert failing.verdict is Verdict.FAIL and failing.docs_to_resolve is None
    assert unsure.verdict is Verdict.INCONCLUSIVE
    # half-width 0.03, distance from -0.03 is 0.01: 1000 * (0.03 / 0.01)**2 docs.
    assert unsure.docs_to_resolve == 9000
    assert "worst case -0.05 is beyond -0.03, best case +0.01 within it" in unsure.reason
    assert passing.change == -0.01 and passing.ci == Interval(-0.02, 0.0, 0.95) and not passing.relative
    # On the threshold exactly is within it.
    assert judge(comparison(-0.01, (-0.03, 0.01)), 0.03, relative=False).verdict is Verdict.PASS


def test_judge_relative():
    # base mean 0.5: an absolute -0.01..0 is -2%..0%, within 3.4%.
    assert judge(comparison(-0.005, (-0.01, 0.0)), 0.034, relative=True).verdict is Verdict.PASS
    failing = judge(comparison(-0.05, (-0.07, -0.03)), 0.034, relative=True)
    assert failing.verdict is Verdict.FAIL and failing.relative and failing.change == pytest.approx(-0.1)
    assert failing.reason == "best case -6.0% is beyond -3.4%"
    unsure = judge(comparison(-0.01, (-0.03, 0.01)), 0.034, relative=True)
    assert unsure.verdict is Verdict.INCONCLUSIVE and unsure.ci.low == pytest.approx(-0.06)
    assert unsure.docs_to_resolve == math.ceil(1000 * (0.04 / 0.014) ** 2)


def test_judge_when_lower_is_better():
    # A KL rise is the worsening: +0.5 (CI 0.3..0.7) against an allowed rise of 0.2 fails.
    failing = judge(comparison(0.5, (0.3, 0.7)), 0.2, relative=False, higher_is_better=False)
    assert failing.verdict is Verdict.FAIL and failing.change == -0.5 and failing.ci == Interval(-0.7, -0.3, 0.95)
    assert judge(comparison(0.05, (0.01, 0.1)), 0.2, relative=False, higher_is_better=False).verdict is Verdict.PASS
    # A KL drop is an improvement, never a failure.
    assert judge(comparison(-0.5, (-0.7, -0.3)), 0.2, relative=False, higher_is_better=False).verdict is Verdict.PASS
    relative = judge(comparison(0.1, (0.05, 0.15), base_mean=1.0), 0.2, relative=True, higher_is_better=False)
    assert relative.verdict is Verdict.PASS and relative.change == pytest.approx(-0.1)


def test_judge_relative_with_a_zero_base_mean_allows_no_worsening():
    # 3.4% of a baseline of 0 is 0: the absolute difference is judged against 0.
    gained = judge(comparison(0.2, (0.1, 0.3), base_mean=0.0), 0.034, relative=True)
    assert gained.verdict is Verdict.PASS and "baseline's mean is 0" in gained.reason and not gained.relative
    assert gained.change == pytest.approx(0.2) and gained.ci == Interval(0.1, 0.3, 0.95)
    unchanged = judge(comparison(0.0, (0.0, 0.0), base_mean=0.0), 0.034, relative=True)  # 0/1 scores all 0
    assert unchanged.verdict is Verdict.PASS
    unsure = judge(comparison(0.0, (-0.1, 0.1), base_mean=0.0), 0.034, relative=True)
    assert unsure.verdict is Verdict.INCONCLUSIVE
    assert judge(comparison(-0.2, (-0.3, -0.1), base_mean=0.0), 0.034, relative=True).verdict is Verdict.FAIL
    # Lower is better: any rise from 0 is the worsening.
    risen = judge(comparison(0.2, (0.1, 0.3), base_mean=0.0), 0.034, relative=True, higher_is_better=False)
    assert risen.verdict is Verdict.FAIL
    assert judge(comparison(0.2, (0.1, 0.3), base_mean=0.0), 0.05, relative=False).verdict is Verdict.PASS


def test_judge_on_the_threshold_exactly_has_no_docs_to_resolve():
    verdict = judge(comparison(-0.03, (-0.05, -0.01)), 0.03, relative=False)
    assert verdict.verdict is Verdict.INCONCLUSIVE and verdict.docs_to_resolve is None


def test_judge_asks_for_more_docs_even_with_a_lopsided_interval():
    verdict = judge(comparison(0.04, (-0.031, 0.05)), 0.03, relative=False)
    assert verdict.verdict is Verdict.INCONCLUSIVE and verdict.docs_to_resolve == 1001


def test_judge_refuses_bad_thresholds():
    for threshold in (0.0, -0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="threshold"):
            judge(comparison(0.0, (-0.1, 0.1)), threshold, relative=False)


@SETTINGS
@given(st.lists(st.sampled_from([0.0, 1.0]), min_size=1, max_size=300), st.floats(0.001, 0.5), st.booleans())
def test_a_null_is_never_a_fail(scores, threshold, relative):
    result = compare_paired(scores, scores, n_boot=200)
    assert judge(result, threshold, relative=relative).verdict is not Verdict.FAIL


def test_a_big_drop_fails_and_the_reason_says_why():
    base = (np.random.default_rng(14).random(1000) < 0.7).astype(float)
    damaged = flip(base, 0.3, seed=15, only_right=True)
    verdict = judge(compare_paired(base, damaged), 0.034, relative=True)
    assert verdict.verdict is Verdict.FAIL and verdict.change == pytest.approx(-0.3, abs=0.002)
    assert verdict.reason.startswith("best case -2") and verdict.reason.endswith("is beyond -3.4%")


def test_bonferroni_confidence():
    assert bonferroni_confidence(0.95, 1) == 0.95
    assert bonferroni_confidence(0.95, 5) == pytest.approx(0.99)
    for args in ((0.95, 0), (1.0, 3), (0.95, 2.5)):
        with pytest.raises(ValueError):
            bonferroni_confidence(*args)
    base, other = paired_binary(600, 0.5, 0.08, 0.04, seed=16)
    plain = compare_paired(base, other).difference_ci
    strict = compare_paired(base, other, confidence=bonferroni_confidence(0.95, 8)).difference_ci
    assert strict.low < plain.low and strict.high > plain.high


# --- calibration --------------------------------------------------------------------------------------

def test_false_fail_rate_of_a_near_null_and_of_a_damaged_adapter():
    base = (np.random.default_rng(17).random(1500) < 0.6).astype(float)
    near_null = flip(base, 0.02, seed=18)
    damaged = flip(base, 0.20, seed=19, only_right=True)
    assert false_fail_rate(base, near_null, 0.034, relative=True) == 0.0
    assert false_fail_rate(base, damaged, 0.034, relative=True) == 1.0
    assert false_fail_rate(base, damaged, 0.034, relative=True, higher_is_better=False) == 0.0


# --- clusters and trends ----------------------------------------------------------------------------

def clustered(conversations=100, turns=10, seed=20):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(conversations), turns)
    effect = rng.normal(scale=1.0, size=conversations)[labels]  # strong within-conversation correlation
    return labels, effect + rng.normal(scale=0.3, size=labels.size), rng


def test_cluster_bootstrap_is_wider_when_clusters_are_correlated():
    labels, values, _ = clustered()
    naive, grouped = bootstrap_ci(values), cluster_bootstrap_ci(values, labels)
    assert (grouped.high - grouped.low) > 2.0 * (naive.high - naive.low)
    assert grouped.contains(float(values.mean()))
    # One doc per cluster is the ordinary bootstrap.
    singletons = cluster_bootstrap_ci(values, [f"doc{i}" for i in range(values.size)])
    assert (singletons.low, singletons.high) == pytest.approx((naive.low, naive.high), abs=1e-12)
    assert cluster_bootstrap_ci(values, [0] * values.size) == Interval(-math.inf, math.inf, 0.95)
    with pytest.raises(ValueError, match="label every doc"):
        cluster_bootstrap_ci(values, labels[:-1])


def test_paired_cluster_comparison():
    labels, base, rng = clustered()
    other = base + np.repeat(rng.normal(scale=0.5, size=100), 10)  # the change, too, differs by conversation
    plain, grouped = compare_paired(base, other), paired_cluster_comparison(base, other, labels)
    assert grouped.test == "cluster-permutation" and grouped.n == 1000
    assert grouped.difference == plain.difference
    width = lambda ci: ci.high - ci.low  # noqa: E731
    assert width(grouped.difference_ci) > 2.0 * width(plain.difference_ci)
    assert grouped.sd_difference > 2.0 * plain.sd_difference  # design effect, so the MDE is honest
    assert grouped.p_value > plain.p_value
    # Singleton clusters: the same sd as unclustered docs.
    single = paired_cluster_comparison(base, other, range(1000))
    assert single.sd_difference == pytest.approx(plain.sd_difference, rel=1e-12)
    assert single.difference_ci.low == pytest.approx(plain.difference_ci.low, abs=1e-12)
    one = paired_cluster_comparison([1.0, 0.0], [0.0, 0.0], ["a", "a"])
    assert one.difference_ci == Interval(-math.inf, math.inf, 0.95) and one.p_value == 1.0
    assert one.discordant == (1, 0)


def test_trend_recovers_a_known_slope():
    rng = np.random.default_rng(21)
    conversations, turns = 200, 8
    labels = np.repeat(np.arange(conversations), turns)
    turn = np.tile(np.arange(turns, dtype=float), conversations)
    per_conversation = rng.normal(scale=0.1, size=conversations)[labels]
    adherence = 0.9 - 0.03 * turn + per_conversation + rng.normal(scale=0.05, size=labels.size)
    slope, ci = trend(turn, adherence, labels)
    assert slope == pytest.approx(-0.03, abs=0.003) and ci.contains(-0.03) and ci.excludes_zero
    exact, _ = trend([0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 5.0, 7.0], ["a", "a", "b", "b"])
    assert exact == pytest.approx(2.0)
    with pytest.raises(ValueError, match="constant"):
        trend([1.0, 1.0], [0.0, 1.0], [0, 1])


# --- reproducibility, speed, hygiene ------------------------------------------------------------------

def test_everything_is_bit_reproducible():
    labels, values, rng = clustered(seed=22)
    other = values + rng.normal(scale=0.2, size=values.size)
    binary_base, binary_other = paired_binary(500, 0.5, 0.1, 0.05, seed=23)
    calls = [
        lambda: compare_paired(values, other).to_dict(),
        lambda: compare_paired(binary_base, binary_other).to_dict(),
        lambda: paired_cluster_comparison(values, other, labels).to_dict(),
        lambda: cluster_bootstrap_ci(values, labels),
        lambda: trend(np.tile(np.arange(10.0), 100), values, labels),
        lambda: ratio_quality_ci(np.abs(other), np.abs(values)),
        lambda: false_fail_rate(binary_base, binary_other, 0.05, relative=False, replicates=3),
    ]
    for call in calls:
        assert repr(call()) == repr(call())
    assert compare_paired(values, other, seed=1).difference_ci != compare_paired(values, other, seed=2).difference_ci


def test_a_paired_bootstrap_of_1500_docs_takes_well_under_a_second():
    rng = np.random.default_rng(24)
    base, other = rng.normal(size=1500), rng.normal(size=1500)
    compare_paired(base, other)  # warm-up
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        compare_paired(base, other, n_boot=2000)
        best = min(best, time.perf_counter() - start)
    assert best < 1.0


def test_files_are_torch_free_and_the_package_docstring_is_one_line():
    assert (ROOT / "lm_eval_baking/core/__init__.py").read_text().splitlines() == [
        '"""The lowest layer: tokenization, forward passes, KL maths, sampling, scoring, statistics."""']
    assert (ROOT / "lm_eval_baking/results/__init__.py").read_text().splitlines() == [
        '"""Reports and the CI gate: results files in, tables, plots and verdicts out. No torch."""']
    for path in ("lm_eval_baking/core/stats.py", "lm_eval_baking/core/verdicts.py", "lm_eval_baking/results/evaluate_module.py",
                 "lm_eval_baking/results/paired_comparison/paired_comparison.py"):
        tree = ast.parse((ROOT / path).read_text())
        nodes = list(ast.walk(tree))
        imported = {a.name.split(".")[0] for node in nodes if isinstance(node, ast.Import) for a in node.names}
        imported |= {node.module.split(".")[0] for node in nodes if isinstance(node, ast.ImportFrom) and node.module}
        assert "torch" not in imported, path
    assert isinstance(judge(comparison(0.0, (-0.1, 0.1)), 0.2, relative=False), Judgement)
    assert verdicts.Verdict("PASS") is Verdict.PASS and Verdict.FAIL == "FAIL"


def test_verdicts_combine_one_way_everywhere_and_nothing_checked_is_not_a_pass():
    assert combine([]) == "INCONCLUSIVE"
    assert combine(["PASS", "PASS"]) == "PASS"
    assert combine(["PASS", Verdict.INCONCLUSIVE]) == "INCONCLUSIVE"
    assert combine(["INCONCLUSIVE", "FAIL", "PASS"]) == "FAIL"
    with pytest.raises(ValueError):
        combine(["MAYBE"])
    assert EXIT_CODES == {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}
