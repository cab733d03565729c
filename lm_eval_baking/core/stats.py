"""Paired statistics: is the adapter different from the base model, by how much, and does it matter?

Why paired: the base model and the adapter answer the same docs, so doc difficulty cancels when we
compare doc by doc. Every test here works on per-doc differences ``other[i] - base[i]`` (or whole
clusters of docs), never on two independent means, which would waste most of the power.

* ``compare_paired`` - the difference of two means with a paired percentile-bootstrap CI (resampled docs'
  mean differences, central ``confidence`` share), the relative change from the same resamples, and a p:
  McNemar's exact test when both score vectors are 0/1 (only the discordant docs carry evidence;
  their split is Binomial(b + c, 1/2) under "no change"), else a paired sign-flip permutation test.
  With 0/1 scores the CIs also hold the exact conditional interval (``exact_difference_ci``).
* ``paired_cluster_comparison`` / ``cluster_bootstrap_ci`` / ``trend`` - the same when docs come in
  correlated groups (the turns of one conversation): resample whole clusters, flip whole clusters.
* ``ratio_quality_ci`` - the Monte-Carlo KL quality ``1 - sum(model_kl) / sum(base_kl)``.
* Verdicts on these comparisons (PASS / FAIL / INCONCLUSIVE) live in ``core.verdicts``.
* ``minimum_detectable_difference`` (MDE) - the smallest true difference a two-sided paired test at
  ``alpha`` finds with probability ``power``: a smaller one may exist unseen. ``docs_needed`` inverts it.

Multiplicity is the caller's job: Holm-adjust (``holm``) the p-values of a family of "did anything
change?" questions; for per-task verdicts in a family of m tasks, judge with CIs at
``bonferroni_confidence(confidence, m)``; judge the pooled group verdict at the plain level.

Every draw comes from ``numpy.random.default_rng(seed)`` and sums avoid BLAS: the same call gives bitwise
identical floats. With fewer than two docs (or clusters) the intervals are ``(-inf, inf)``.

What comes from a library, and what is ours on purpose:
* McNemar's p is ``scipy.stats.binomtest`` (the discordant split against 1/2), Clopper-Pearson is the closed
  form ``scipy.stats.beta.ppf``. Not ``binomtest(...).proportion_ci(method="exact")``: that finds the same
  interval by root-finding, off by up to ~1e-13, where beta.ppf is the formula itself.
* The power z's are ``statistics.NormalDist().inv_cdf`` (the standard library): ``scipy.stats.norm.ppf``
  does the same job and differs in the last bits, which would move every stored MDE for nothing.
* Holm is four lines of numpy. scipy has no Holm (``false_discovery_control`` is Benjamini-Hochberg/-Yekutieli,
  which controls another error rate); ``statsmodels.stats.multitest.multipletests(method="holm")`` is the
  same numbers but would add statsmodels (and patsy) to every install for those four lines.
* The bootstraps and sign-flip tests stay ours. ``scipy.stats.bootstrap`` resamples single observations,
  not clusters (drift's conversations); it interpolates percentiles where ours takes order statistics and
  lets an undefined ratio resample widen the CI (``_percentile``); and it draws from another random
  stream, so every stored CI would move. ``scipy.stats.permutation_test`` likewise flips single docs, not
  clusters, and draws differently. Ours sum per-unit totals with ``np.bincount`` (no BLAS), which keeps
  the floats bitwise identical on any machine and thread count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

_INF = float("inf")

# The one home of the statistical defaults every module uses (tests/test_layout.py checks no other defines them).
CONFIDENCE = 0.95
"""Level of every CI and verdict unless a caller asks for another (Bonferroni levels are derived from it)."""
RESAMPLES = 2000
"""Bootstrap resamples of every CI."""
ALPHA = 0.05
"""Two-sided significance level of the power calculations (docs needed, smallest detectable difference)."""
POWER = 0.8
"""Power of those calculations."""


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    confidence: float

    def __post_init__(self):
        if math.isnan(self.low) or math.isnan(self.high) or self.low > self.high:
            raise ValueError(f"an interval needs low <= high, got ({self.low}, {self.high})")

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    @property
    def excludes_zero(self) -> bool:
        return not self.contains(0.0)


def unbounded_interval(confidence: float) -> Interval:
    return Interval(-_INF, _INF, confidence)


@dataclass(frozen=True)
class PairedComparison:
    n: int
    base_mean: float
    other_mean: float
    difference: float
    difference_ci: Interval
    relative_change: float | None
    relative_ci: Interval | None
    p_value: float
    test: str
    discordant: tuple[int, int] | None
    # For paired_cluster_comparison this is the design-effect sd: sd / sqrt(n) equals the
    # cluster-robust standard error, so the MDE and docs_to_resolve stay honest for clustered docs.
    sd_difference: float

    def minimum_detectable_difference(self, alpha: float = ALPHA, power: float = POWER) -> float:
        return minimum_detectable_difference(self.sd_difference, self.n, alpha, power)

    def to_dict(self) -> dict:
        return {**asdict(self), "discordant": None if self.discordant is None else list(self.discordant)}


def _scores(values, name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a 1-D sequence of numbers") from None
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of numbers, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: there are no docs to compare")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{name} has {bad.size} NaN/inf value(s), first at index {bad[0]}; drop or fix those docs")
    return array


def paired_scores(base, other, names=("base", "other")) -> tuple[np.ndarray, np.ndarray]:
    a, b = _scores(base, names[0]), _scores(other, names[1])
    if a.size != b.size:
        raise ValueError(f"{names[0]} and {names[1]} must cover the same docs: got {a.size} and {b.size} values")
    return a, b


def _check(n_boot: int, confidence: float) -> None:
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence!r}")


def _percentile(samples: np.ndarray, confidence: float) -> Interval:
    # Order statistics rather than interpolation: conservative by at most one resample, and an
    # undefined resample (NaN, e.g. a zero denominator) counts as extreme on both sides, so a
    # ratio that is often undefined gets an honestly unbounded interval instead of a biased one.
    tail, last, undefined = (1.0 - confidence) / 2.0, samples.size - 1, np.isnan(samples)
    low = np.sort(np.where(undefined, -_INF, samples))[math.floor(tail * last)]
    high = np.sort(np.where(undefined, _INF, samples))[math.ceil((1.0 - tail) * last)]
    return Interval(float(low), float(high), confidence)


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _units(clusters, n: int) -> tuple[np.ndarray, int]:
    """Unit codes by first appearance: every doc its own unit, or the docs of one cluster together."""
    if clusters is None:
        return np.arange(n), n
    labels = list(clusters)
    if len(labels) != n:
        raise ValueError(f"clusters must label every doc: got {len(labels)} labels for {n} values")
    index: dict = {}
    return np.array([index.setdefault(label, len(index)) for label in labels], dtype=np.int64), len(index)


def _resample(codes: np.ndarray, g: int, n_boot: int, seed: int, *arrays: np.ndarray) -> list[np.ndarray]:
    """Per-resample totals of each array over units drawn with replacement; the last array is the doc count."""
    # Plain (pairwise) sums, no BLAS: bitwise the same on any machine and thread count.
    sums = [np.bincount(codes, weights=a, minlength=g) for a in (*arrays, np.ones(codes.size))]
    idx = np.random.default_rng(seed).integers(0, g, size=(n_boot, g))
    return [s[idx].sum(axis=1) for s in sums]


def cluster_bootstrap_ci(values, clusters, *, n_boot: int = RESAMPLES, seed: int = 0,
                         confidence: float = CONFIDENCE) -> Interval:
    """CI of the mean of `values` (docs weighted equally), resampling whole clusters with replacement."""
    x = _scores(values, "values")
    _check(n_boot, confidence)
    codes, g = _units(clusters, x.size)
    if g < 2:
        return unbounded_interval(confidence)
    total, docs = _resample(codes, g, n_boot, seed, x)
    return _percentile(total / docs, confidence)


def bootstrap_ci(values, *, n_boot: int = RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE) -> Interval:
    """Percentile-bootstrap CI of the mean of `values`, resampling docs with replacement."""
    return cluster_bootstrap_ci(values, None, n_boot=n_boot, seed=seed, confidence=confidence)


def ratio_quality_ci(model_kl, base_kl, *, n_boot: int = RESAMPLES, seed: int = 0,
                     confidence: float = CONFIDENCE) -> Interval:
    """CI of the MC-KL quality 1 - sum(model_kl) / sum(base_kl), resampling the (model, base) pairs jointly."""
    model, base = paired_scores(model_kl, base_kl, ("model_kl", "base_kl"))
    _check(n_boot, confidence)
    if model.size < 2:
        return unbounded_interval(confidence)
    m, b, _ = _resample(*_units(None, model.size), n_boot, seed, model, base)
    # Single-sample MC-KL terms can be negative; a resample whose base total is not positive has
    # no meaningful quality, so it is left undefined (and widens the interval) rather than flipped.
    return _percentile(1.0 - _divide(m, b), confidence)


def _sign_flip_p(sums: np.ndarray, n_perm: int, seed: int) -> float:
    """Two-sided sign-flip p for the total of per-unit (doc or cluster) difference sums."""
    observed, k = abs(float(sums.sum())), sums.size
    exact = 2 ** k <= n_perm
    if exact:  # few units: enumerate every sign pattern
        signs = 1 - 2 * ((np.arange(2 ** k)[:, None] >> np.arange(k)) & 1)
    else:
        signs = 1 - 2 * np.random.default_rng([seed, 1]).integers(0, 2, size=(n_perm, k), dtype=np.int8)
    flipped = np.abs((signs * sums).sum(axis=1))
    # Sums taken in another order differ by rounding; ties in exact arithmetic must count as ties.
    hits = int(np.count_nonzero(flipped >= observed - 1e-9 * float(np.abs(sums).sum())))
    return hits / signs.shape[0] if exact else (hits + 1) / (n_perm + 1)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p: b docs only the base got right, c only the other; 1.0 when b + c == 0."""
    if int(b) != b or int(c) != c or b < 0 or c < 0:
        raise ValueError(f"discordant counts must be non-negative integers, got {b!r} and {c!r}")
    from scipy.stats import binomtest  # 0.65 s to import: only paid when 0/1 scores are compared
    if b + c == 0:
        return 1.0
    # Under "no change" the split of the discordant docs is Binomial(b + c, 1/2).
    return min(1.0, float(binomtest(int(min(b, c)), int(b) + int(c), 0.5).pvalue))


def _compare(base, other, clusters, n_boot, seed, confidence) -> PairedComparison:
    base, other = paired_scores(base, other)
    _check(n_boot, confidence)
    codes, g = _units(clusters, base.size)
    d, n = other - base, base.size
    base_mean, other_mean = float(base.mean()), float(other.mean())
    difference = other_mean - base_mean
    relative = None if base_mean == 0 else difference / base_mean
    discordant = None
    if np.all((base == 0) | (base == 1)) and np.all((other == 0) | (other == 1)):
        discordant = (int(np.count_nonzero(d < 0)), int(np.count_nonzero(d > 0)))
    if clusters is not None:
        p, test = _sign_flip_p(np.bincount(codes, weights=d, minlength=g), n_boot, seed), "cluster-permutation"
    elif discordant is not None:
        p, test = mcnemar_exact(*discordant), "mcnemar-exact"
    else:
        p, test = _sign_flip_p(d, n_boot, seed), "paired-permutation"
    if g < 2:
        diff_ci, sd = unbounded_interval(confidence), 0.0
        rel_ci = None if relative is None else diff_ci
    else:
        d_tot, b_tot, docs = _resample(codes, g, n_boot, seed, d, base)
        diff_ci = _percentile(d_tot / docs, confidence)
        # Scores may be negative: divide by the base mean in its observed sign, and leave resamples
        # whose base mean is 0 or changes sign undefined.
        s = 1.0 if base_mean > 0 else -1.0
        rel_ci = None if relative is None else _percentile(_divide(s * d_tot, s * b_tot), confidence)
        if discordant is not None and clusters is None:
            diff_ci, rel_ci = _with_exact_interval(discordant, n, base_mean, diff_ci, rel_ci, confidence)
        if g == n:
            sd = float(np.std(d, ddof=1))
        else:  # cluster-robust (CR1) variance of the mean, as an sd per doc: sd / sqrt(n) is its SE
            residual = np.bincount(codes, weights=d, minlength=g) - np.bincount(codes, minlength=g) * d.mean()
            sd = math.sqrt(g / (g - 1) * float(np.sum(residual ** 2)) / n)
    return PairedComparison(n, base_mean, other_mean, difference, diff_ci, relative, rel_ci, float(p), test,
                            discordant, sd)


def exact_difference_ci(discordant: tuple[int, int], n: int, confidence: float) -> Interval:
    """Exact CI of a paired 0/1 mean difference given b + c discordant docs of n: c ~ Binomial(b + c, pi), the
    difference is (b + c) / n * (2 pi - 1), and pi's Clopper-Pearson interval excludes 0.5 exactly when McNemar's
    p < 1 - confidence. A bootstrap over few discordant docs is too narrow (6 lost, 0 gained: p 0.031, yet a
    99.4% percentile CI without 0)."""
    from scipy.stats import beta  # 0.65 s to import: only paid when 0/1 scores are compared
    (b, c), tail = discordant, (1.0 - confidence) / 2.0
    if (m := b + c) == 0:
        return Interval(0.0, 0.0, confidence)
    low = 0.0 if c == 0 else float(beta.ppf(tail, c, m - c + 1))
    high = 1.0 if c == m else float(beta.ppf(1.0 - tail, c + 1, m - c))
    return Interval(m / n * (2 * low - 1), m / n * (2 * high - 1), confidence)


def _with_exact_interval(discordant, n, base_mean, diff_ci, rel_ci, confidence):
    """The bootstrap CIs widened to hold the exact one: the union covers at least as often as either alone."""
    exact = exact_difference_ci(discordant, n, confidence)
    diff_ci = Interval(min(diff_ci.low, exact.low), max(diff_ci.high, exact.high), confidence)
    if rel_ci is not None and base_mean > 0:  # a 0/1 base mean of 0 has no relative change
        rel_ci = Interval(min(rel_ci.low, exact.low / base_mean), max(rel_ci.high, exact.high / base_mean), confidence)
    return diff_ci, rel_ci


def compare_paired(base, other, *, n_boot: int = RESAMPLES, seed: int = 0,
                   confidence: float = CONFIDENCE) -> PairedComparison:
    """Paired comparison of per-doc scores; the permutation test (non-0/1 scores) uses n_boot sign flips."""
    return _compare(base, other, None, n_boot, seed, confidence)


def paired_cluster_comparison(base, other, clusters, *, n_boot: int = RESAMPLES, seed: int = 0,
                              confidence: float = CONFIDENCE) -> PairedComparison:
    """`compare_paired` for clustered docs: cluster bootstrap CIs and a cluster sign-flip p."""
    return _compare(base, other, clusters, n_boot, seed, confidence)


def ratio_of_means(numerator, denominator, *, n_boot: int = RESAMPLES, seed: int = 0,
                   confidence: float = CONFIDENCE) -> tuple[float, Interval]:
    """mean(numerator) / mean(denominator) over paired docs, with a paired-bootstrap CI: the share of a behaviour
    gain kept, or MC-KL over the unprompted MC-KL. NaN, and resamples undefined, where the denominator is ≤ 0."""
    num, den = paired_scores(numerator, denominator, ("numerator", "denominator"))
    _check(n_boot, confidence)
    value = float(num.mean() / den.mean()) if den.mean() > 0 else math.nan
    if num.size < 2:
        return value, unbounded_interval(confidence)
    n_tot, d_tot, _ = _resample(np.arange(num.size), num.size, n_boot, seed, num, den)
    return value, _percentile(_divide(n_tot, d_tot), confidence)


def trend(x, y, clusters, *, n_boot: int = RESAMPLES, seed: int = 0,
          confidence: float = CONFIDENCE) -> tuple[float, Interval]:
    """Least-squares slope of y on x (e.g. adherence per turn) with a cluster-bootstrap CI."""
    x, y = paired_scores(x, y, ("x", "y"))
    _check(n_boot, confidence)
    codes, g = _units(clusters, x.size)
    xc, yc = x - x.mean(), y - y.mean()  # centred, so the sums of squares below do not cancel
    sxx = float(np.sum(xc * xc))
    if sxx == 0:
        raise ValueError("x is constant: a slope of y on x is undefined")
    slope = float(np.sum(xc * yc)) / sxx
    if g < 2:
        return slope, unbounded_interval(confidence)
    sx, sy, sxx_b, sxy, docs = _resample(codes, g, n_boot, seed, xc, yc, xc * xc, xc * yc)
    var = sxx_b - sx * sx / docs
    # A resample with no spread in x has no slope: undefined, not zero.
    boot = _divide(sxy - sx * sy / docs, np.where(var > 1e-12 * sxx, var, 0.0))
    return slope, _percentile(boot, confidence)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in input order: monotone in p, never below the raw p, capped at 1."""
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1 or np.any(~((p >= 0) & (p <= 1))):
        raise ValueError("p-values must be a 1-D sequence of numbers in [0, 1]")
    order, out = np.argsort(p, kind="stable"), np.empty(p.size)
    out[order] = np.minimum(1.0, np.maximum.accumulate((p.size - np.arange(p.size)) * p[order]))
    return [float(v) for v in out]


def _z(alpha: float, power: float, sd_difference: float) -> float:
    if not (0.0 < alpha < 1.0 and 0.0 < power < 1.0 and math.isfinite(sd_difference) and sd_difference >= 0):
        raise ValueError(f"need 0 < alpha, power < 1 and a finite sd_difference >= 0, got {alpha!r}, {power!r}, "
                         f"{sd_difference!r}")
    return NormalDist().inv_cdf(1.0 - alpha / 2.0) + NormalDist().inv_cdf(power)


def minimum_detectable_difference(sd_difference: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest |true mean difference| a two-sided paired test at `alpha` detects with `power`; inf if n < 2."""
    z = _z(alpha, power, sd_difference)
    return z * sd_difference / math.sqrt(n) if n >= 2 else _INF


def docs_needed(sd_difference: float, effect: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Docs a paired test needs to detect `effect` (the inverse of the MDE); None when effect == 0."""
    z = _z(alpha, power, sd_difference)
    if math.isnan(effect):
        raise ValueError("effect must be a number, got nan")
    return None if effect == 0 else max(2, math.ceil((z * sd_difference / abs(effect)) ** 2))


def bonferroni_confidence(confidence: float, m: int) -> float:
    """Per-member CI level that keeps a family of m CIs at `confidence` jointly."""
    if not 0.0 < confidence < 1.0 or int(m) != m or m < 1:
        raise ValueError(f"need 0 < confidence < 1 and a family size m >= 1, got {confidence!r} and {m!r}")
    return 1.0 - (1.0 - confidence) / m
