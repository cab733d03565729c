"""Paired comparison of two models' per-doc scores, as a Hugging Face `evaluate` comparison module.

A thin shell around `lm_eval_baking.core.stats` (`compare_paired`, or `paired_cluster_comparison` when
docs come in clusters): the numbers are computed there and only flattened here, so the module and the
library can never disagree. `lm-eval-baking compare` computes every row through this module.
"""

import datasets
import evaluate

from lm_eval_baking.core.stats import compare_paired, paired_cluster_comparison

_DESCRIPTION = """
Compares two models scored on the same docs, doc by doc. Returns the mean difference (model 2 minus
model 1) with a paired percentile-bootstrap CI, the relative change with a CI from the same
resamples, a two-sided p-value (McNemar's exact test when every score is 0 or 1, else a paired
sign-flip permutation test), the discordant counts for 0/1 scores, and the minimum detectable
difference: the smallest true difference a paired test at `alpha` finds with probability `power`.
A difference whose CI contains 0 is not evidence of a change.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions1 (`list` of `float`): per-doc scores of the first (base) model, e.g. 0/1 accuracy.
    predictions2 (`list` of `float`): per-doc scores of the second model on the same docs, same order.
    n_boot (`int`, default 2000): bootstrap resamples (and sign flips for the permutation test).
    seed (`int`, default 0): seed of every random draw; the same inputs and seed give the same output.
    clusters (`list`, default None): one label per doc; docs with the same label are correlated (the turns
        of one conversation) and are resampled and sign-flipped together (cluster bootstrap CIs and a
        cluster permutation test). None: every doc is its own unit.
    confidence (`float`, default 0.95): CI level.
    alpha (`float`, default 0.05), power (`float`, default 0.8): for the minimum detectable difference.

Returns:
    n, base_mean, other_mean, difference, difference_ci_low, difference_ci_high, confidence,
    relative_change, relative_ci_low, relative_ci_high (None when the base mean is 0), p_value,
    test ("mcnemar-exact", "paired-permutation" or "cluster-permutation"), discordant_base_better and
    discordant_other_better (docs only one model got right; None unless every score is 0 or 1),
    sd_difference, minimum_detectable_difference. CI ends are -inf/inf with fewer than 2 docs.

Examples:
    >>> import evaluate
    >>> from lm_eval_baking.results.evaluate_module import paired_comparison_path
    >>> paired = evaluate.load(str(paired_comparison_path()), module_type="comparison")
    >>> result = paired.compute(predictions1=[1, 1, 0, 1], predictions2=[1, 0, 0, 1])
    >>> result["test"], result["discordant_base_better"], result["p_value"]
    ('mcnemar-exact', 1, 1.0)
"""

_CITATION = """
@article{mcnemar1947note,
  title={Note on the sampling error of the difference between correlated proportions or percentages},
  author={McNemar, Quinn}, journal={Psychometrika}, volume={12}, number={2}, pages={153--157}, year={1947}
}
@book{efron1993bootstrap,
  title={An Introduction to the Bootstrap}, author={Efron, Bradley and Tibshirani, Robert J.},
  publisher={Chapman and Hall/CRC}, year={1993}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PairedComparison(evaluate.Comparison):
    def _info(self):
        return evaluate.ComparisonInfo(
            module_type="comparison",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # Scores are already per-doc correctness (or any per-doc metric), so no references.
            features=datasets.Features(
                {"predictions1": datasets.Value("float64"), "predictions2": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions1, predictions2, n_boot=2000, seed=0, confidence=0.95, alpha=0.05, power=0.8,
                 clusters=None):
        if clusters is None:
            result = compare_paired(predictions1, predictions2, n_boot=n_boot, seed=seed, confidence=confidence)
        else:
            result = paired_cluster_comparison(predictions1, predictions2, clusters, n_boot=n_boot, seed=seed,
                                               confidence=confidence)
        relative = result.relative_ci
        discordant = result.discordant or (None, None)
        return {
            "n": result.n,
            "base_mean": result.base_mean,
            "other_mean": result.other_mean,
            "difference": result.difference,
            "difference_ci_low": result.difference_ci.low,
            "difference_ci_high": result.difference_ci.high,
            "confidence": result.difference_ci.confidence,
            "relative_change": result.relative_change,
            "relative_ci_low": None if relative is None else relative.low,
            "relative_ci_high": None if relative is None else relative.high,
            "p_value": result.p_value,
            "test": result.test,
            "discordant_base_better": discordant[0],
            "discordant_other_better": discordant[1],
            "sd_difference": result.sd_difference,
            "minimum_detectable_difference": result.minimum_detectable_difference(alpha, power),
        }
