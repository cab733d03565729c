"""The `paired_comparison` evaluate module: loads offline by path and reports exactly what `compare_paired` does."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lm_eval_baking.core.stats import compare_paired
from lm_eval_baking.results.evaluate_module import paired_comparison_path


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    """The module as `evaluate.load` gives it, with every evaluate cache in a temporary folder."""
    home = tmp_path_factory.mktemp("hf-home")
    with pytest.MonkeyPatch.context() as patch:
        settings = {"HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                    "HF_HOME": str(home), "HF_MODULES_CACHE": str(home / "modules"),
                    "HF_EVALUATE_CACHE": str(home / "evaluate"), "HF_METRICS_CACHE": str(home / "metrics")}
        for name, value in settings.items():
            patch.setenv(name, value)
        import evaluate

        # evaluate reads these once, at import; another test may have imported it already.
        patch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
        patch.setattr(evaluate.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
        for name in ("HF_MODULES_CACHE", "HF_EVALUATE_CACHE", "HF_METRICS_CACHE"):
            patch.setattr(evaluate.config, name, home / settings[name].rsplit("/", 1)[-1])
        module = evaluate.load(str(paired_comparison_path()), module_type="comparison", keep_in_memory=True,
                               cache_dir=str(home / "metrics"))
        yield module, home


def expected(base, other, alpha=0.05, power=0.8, **kwargs):
    result = compare_paired(base, other, **kwargs)
    discordant = result.discordant or (None, None)
    return {
        "n": result.n, "base_mean": result.base_mean, "other_mean": result.other_mean,
        "difference": result.difference, "difference_ci_low": result.difference_ci.low,
        "difference_ci_high": result.difference_ci.high, "confidence": result.difference_ci.confidence,
        "relative_change": result.relative_change,
        "relative_ci_low": result.relative_ci.low if result.relative_ci else None,
        "relative_ci_high": result.relative_ci.high if result.relative_ci else None,
        "p_value": result.p_value, "test": result.test, "discordant_base_better": discordant[0],
        "discordant_other_better": discordant[1], "sd_difference": result.sd_difference,
        "minimum_detectable_difference": result.minimum_detectable_difference(alpha, power),
    }


def test_it_loads_offline_as_a_comparison_module(paired):
    import evaluate

    module, home = paired
    assert isinstance(module, evaluate.Comparison) and module.module_type == "comparison"
    assert set(module.features) == {"predictions1", "predictions2"}
    assert paired_comparison_path().is_absolute() and (paired_comparison_path() / "paired_comparison.py").is_file()
    assert any(home.joinpath("modules").rglob("paired_comparison.py"))  # the copy went to the temporary cache


def test_binary_scores_match_compare_paired(paired):
    module, _ = paired
    rng = np.random.default_rng(0)
    base = (rng.random(800) < 0.6).astype(int)
    other = np.where(rng.random(800) < 0.08, 1 - base, base)
    out = module.compute(predictions1=base.tolist(), predictions2=other.tolist())
    assert out == expected(base, other)
    assert out["test"] == "mcnemar-exact" and out["discordant_base_better"] + out["discordant_other_better"] > 0


def test_continuous_scores_and_settings_match_compare_paired(paired):
    module, _ = paired
    rng = np.random.default_rng(1)
    base = rng.normal(size=300)
    other = base + 0.1 + rng.normal(scale=0.4, size=300)
    settings = dict(n_boot=700, seed=5, confidence=0.9)
    out = module.compute(predictions1=base.tolist(), predictions2=other.tolist(), alpha=0.01, power=0.9, **settings)
    assert out == expected(base, other, alpha=0.01, power=0.9, **settings)
    assert out["test"] == "paired-permutation" and out["discordant_base_better"] is None
    assert out["confidence"] == 0.9


def test_batches_and_degenerate_inputs(paired):
    module, _ = paired
    module.add_batch(predictions1=[1, 0, 1], predictions2=[1, 1, 1])
    module.add_batch(predictions1=[0, 1], predictions2=[0, 0])
    assert module.compute() == expected([1, 0, 1, 0, 1], [1, 1, 1, 0, 0])
    single = module.compute(predictions1=[1.0], predictions2=[0.0])
    assert single["difference_ci_low"] == -math.inf and single["difference_ci_high"] == math.inf
    zero_base = module.compute(predictions1=[0, 0, 0], predictions2=[1, 0, 1])
    assert zero_base["relative_change"] is None and zero_base["relative_ci_low"] is None


def test_clusters_match_paired_cluster_comparison(paired):
    from lm_eval_baking.core.stats import paired_cluster_comparison
    from lm_eval_baking.results.evaluate_module import comparison_from_output

    module, _ = paired
    rng = np.random.default_rng(2)
    base, other = rng.uniform(size=60), rng.uniform(size=60)
    clusters = [f"conversation {i // 5}" for i in range(60)]
    out = module.compute(predictions1=base.tolist(), predictions2=other.tolist(), clusters=clusters, n_boot=500)
    assert out["test"] == "cluster-permutation"
    assert comparison_from_output(out) == paired_cluster_comparison(base, other, clusters, n_boot=500)
    assert comparison_from_output(module.compute(predictions1=base.tolist(), predictions2=other.tolist())) == \
        compare_paired(base, other)
