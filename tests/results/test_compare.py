"""`compare`: two lm_eval runs paired doc by doc, judged through the evaluate module, Holm over the rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lm_eval_baking.core.stats import bonferroni_confidence, compare_paired, holm, paired_cluster_comparison
from lm_eval_baking.errors import BakingError
from lm_eval_baking.results.compare import compare, markdown
from lm_eval_baking.results.compare_settings import CompareSettings

from lm_eval_output import write_run

pytestmark = pytest.mark.usefixtures("isolated_evaluate")


def correct(n: int, share: float, seed: int = 0) -> list[int]:
    return (np.random.default_rng(seed).random(n) < share).astype(int).tolist()


def damaged(values: list[int], lose: int) -> list[int]:
    """The first `lose` correct answers made wrong: a candidate that is worse by lose / n, exactly."""
    out, lost = list(values), 0
    for i, v in enumerate(out):
        if v == 1 and lost < lose:
            out[i], lost = 0, lost + 1
    return out


def settings(**kwargs) -> CompareSettings:
    return CompareSettings(**kwargs)


def row(result, task, metric):
    return next(r for r in result.rows if r.task == task and r.metric == metric)


def test_identical_runs_pass_and_show_no_change(tmp_path):
    scores = {"arc_easy": {"acc": correct(400, 0.6), "acc_norm": correct(400, 0.65, 1)},
              "my_scores": {"score": np.random.default_rng(2).normal(0.5, 0.2, 300).tolist()}}
    result = compare(write_run(tmp_path / "a", scores), write_run(tmp_path / "b", scores), settings())
    assert result.verdict == "PASS"
    assert [r.judgement.verdict.value for r in result.rows] == ["PASS"] * 3
    assert {r.change for r in result.rows} == {"none shown"} and {r.p_holm for r in result.rows} == {1.0}
    assert row(result, "arc_easy", "acc").comparison.test == "mcnemar-exact"
    assert row(result, "my_scores", "score").comparison.test == "paired-permutation"


def test_a_damaged_candidate_fails_and_shows_the_drop(tmp_path):
    base = correct(500, 0.7)
    result = compare(write_run(tmp_path / "a", {"arc_easy": {"acc": base}}),
                     write_run(tmp_path / "b", {"arc_easy": {"acc": damaged(base, 100)}}), settings(max_drop="0.05"))
    acc = row(result, "arc_easy", "acc")
    assert result.verdict == "FAIL" and acc.judgement.verdict.value == "FAIL" and acc.change == "worse"
    assert acc.comparison.discordant == (100, 0) and acc.comparison.difference == pytest.approx(-0.2)


def test_rows_are_exactly_core_stats_at_the_bonferroni_level(tmp_path):
    """The evaluate module wraps core.stats: the table's numbers are compare_paired's, at the row level."""
    a, b = correct(300, 0.6), correct(300, 0.6, 5)
    x = np.random.default_rng(3).normal(size=200)
    y = x + np.random.default_rng(4).normal(0.05, 0.3, size=200)
    result = compare(write_run(tmp_path / "a", {"t1": {"acc": a}, "t2": {"loss": x.tolist()}}),
                     write_run(tmp_path / "b", {"t1": {"acc": b}, "t2": {"loss": y.tolist()}}), settings(seed=7))
    level = bonferroni_confidence(0.95, 2)
    assert result.row_confidence == level
    assert row(result, "t1", "acc").comparison == compare_paired(a, b, seed=7, confidence=level)
    assert row(result, "t2", "loss").comparison == compare_paired(x.tolist(), y.tolist(), seed=7, confidence=level)
    assert [r.p_holm for r in result.rows] == holm([r.comparison.p_value for r in result.rows])
    assert f"Each CI is at {100 * level:.4g}% (Bonferroni over 2 rows: 95% family-wise)" in markdown(result)


def test_holm_adjusts_over_every_row(tmp_path):
    base = {f"t{i}": {"acc": correct(300, 0.6, i)} for i in range(4)}
    cand = {"t0": {"acc": damaged(base["t0"]["acc"], 12)}, **{t: base[t] for t in ("t1", "t2", "t3")}}
    cand["t1"] = {"acc": damaged(base["t1"]["acc"], 6)}
    result = compare(write_run(tmp_path / "a", base), write_run(tmp_path / "b", cand), settings())
    raw = [r.comparison.p_value for r in result.rows]
    assert [r.p_holm for r in result.rows] == holm(raw)
    assert row(result, "t0", "acc").p_holm == pytest.approx(4 * raw[0])  # the smallest p times m
    assert row(result, "t1", "acc").comparison.p_value < 0.05 <= row(result, "t1", "acc").p_holm
    assert row(result, "t1", "acc").change == "none shown"  # significant alone, not in the family


def test_lower_is_better_metrics_flip(tmp_path):
    x = np.random.default_rng(0).uniform(1, 2, size=400)
    higher = {"ppl_task": {"perplexity": False}}
    worse = compare(write_run(tmp_path / "a", {"ppl_task": {"perplexity": x.tolist()}}, higher=higher),
                    write_run(tmp_path / "b", {"ppl_task": {"perplexity": (x + 0.5).tolist()}}, higher=higher),
                    settings(max_drop="0.1"))
    better = compare(write_run(tmp_path / "c", {"ppl_task": {"perplexity": x.tolist()}}, higher=higher),
                     write_run(tmp_path / "d", {"ppl_task": {"perplexity": (x - 0.5).tolist()}}, higher=higher),
                     settings(max_drop="0.1"))
    assert worse.verdict == "FAIL" and worse.rows[0].change == "worse" and worse.rows[0].higher_is_better is False
    assert better.verdict == "PASS" and better.rows[0].change == "better"
    assert "perplexity ↓" in markdown(worse)


def test_an_unknown_direction_is_judged_both_ways(tmp_path):
    x = np.random.default_rng(0).uniform(1, 2, size=400)
    higher = {"t": {"score": None}}
    up = compare(write_run(tmp_path / "a", {"t": {"score": x.tolist()}}, higher=higher),
                 write_run(tmp_path / "b", {"t": {"score": (x + 0.5).tolist()}}, higher=higher),
                 settings(max_drop="0.1"))
    assert up.verdict == "FAIL" and up.rows[0].change == "up"


def test_absolute_and_relative_max_drop(tmp_path):
    """A drop of exactly 0.05 on a base of 0.8 (6.25%): within 0.10 absolute, beyond 1% relative."""
    base = [1] * 1600 + [0] * 400
    a = write_run(tmp_path / "a", {"t": {"acc": base}})
    b = write_run(tmp_path / "b", {"t": {"acc": damaged(base, 100)}})
    absolute, relative = compare(a, b, settings(max_drop="0.10")), compare(a, b, settings(max_drop="1%"))
    assert absolute.verdict == "PASS" and not absolute.settings.relative
    assert relative.verdict == "FAIL" and relative.settings.relative and relative.settings.threshold == 0.01
    assert relative.rows[0].judgement.relative and relative.rows[0].judgement.change == pytest.approx(-0.0625)
    tight = compare(a, b, settings(max_drop="0.05"))  # the CI straddles the bound: more docs would tell
    assert tight.verdict == "INCONCLUSIVE" and "docs would resolve it" in tight.rows[0].judgement.reason


def test_filters_are_rows_of_their_own_and_groups_pool_their_members(tmp_path):
    gsm = {"exact_match,strict-match": correct(200, 0.3), "exact_match,flexible-extract": correct(200, 0.4, 1)}
    members = {"mmlu_a": {"acc": correct(150, 0.5, 2)}, "mmlu_b": {"acc": correct(250, 0.5, 3)}}
    scores = {"gsm8k": gsm, **members}
    result = compare(write_run(tmp_path / "a", scores, groups={"mmlu": ["mmlu_a", "mmlu_b"]}),
                     write_run(tmp_path / "b", scores, groups={"mmlu": ["mmlu_a", "mmlu_b"]}), settings())
    assert [(r.task, r.metric, r.comparison.n) for r in result.rows] == [
        ("gsm8k", "exact_match,flexible-extract", 200), ("gsm8k", "exact_match,strict-match", 200),
        ("mmlu", "acc", 400)]


def test_drift_docs_are_clustered_by_conversation_by_default(tmp_path):
    docs = [{"persona": p, "conversation": c, "turn": t, "probe": "?"} for p in ("pirate", "french")
            for c in range(3) for t in (1, 10, 30)]
    rng = np.random.default_rng(0)
    a, b = rng.uniform(size=18).tolist(), rng.uniform(size=18).tolist()
    scores = lambda v: {"baking_persona_drift": {"adherence": v}}  # noqa: E731
    result = compare(write_run(tmp_path / "a", scores(a), docs={"baking_persona_drift": docs}),
                     write_run(tmp_path / "b", scores(b), docs={"baking_persona_drift": docs}), settings())
    adherence = result.rows[0]
    assert adherence.comparison.test == "cluster-permutation" and adherence.clusters == 6
    labels = [json.dumps(["baking_persona_drift", d["persona"], d["conversation"]]) for d in docs]
    assert adherence.comparison == paired_cluster_comparison(a, b, labels, confidence=0.95)


def test_a_named_cluster_field_and_a_missing_one(tmp_path):
    docs = [{"dialogue": i // 4, "text": f"turn {i}"} for i in range(40)]
    a, b = correct(40, 0.5), correct(40, 0.5, 1)
    runs = [write_run(tmp_path / name, {"chat": {"acc": v}}, docs={"chat": docs}) for name, v in (("a", a), ("b", b))]
    clustered = compare(*runs, settings(cluster=["chat=dialogue"]))
    assert clustered.rows[0].comparison.test == "cluster-permutation" and clustered.rows[0].clusters == 10
    assert compare(*runs, settings()).rows[0].comparison.test == "mcnemar-exact"
    with pytest.raises(BakingError, match="doc 0 has no field speaker;"):
        compare(*runs, settings(cluster=["chat=speaker"]))
    with pytest.raises(BakingError, match="--cluster names other, which is not a task of both runs"):
        compare(*runs, settings(cluster=["other=dialogue"]))


def test_a_corpus_level_metric_is_listed_as_not_compared(tmp_path):
    pairs = [["early", 0.5]] * 10
    scores = {"t": {"acc": correct(10, 0.5), "drift": pairs}}
    result = compare(write_run(tmp_path / "a", scores), write_run(tmp_path / "b", scores), settings(max_drop="0.5"))
    assert [r.metric for r in result.rows] == ["acc"]
    assert result.not_compared == ["t drift: a corpus-level metric (no per-doc score to pair)"]
    assert "Not compared: t drift" in markdown(result)


def test_a_group_member_without_the_metric_is_left_out_of_its_row(tmp_path):
    """A group reporting acc over members of which one scores only exact_match: the row pools the others."""
    scores = {"g_a": {"acc": correct(100, 0.5)}, "g_b": {"acc": correct(80, 0.5, 1)},
              "g_c": {"exact_match": correct(50, 0.5, 2)}}
    runs = [write_run(tmp_path / name, scores, groups={"g": ["g_a", "g_b", "g_c"]}) for name in ("a", "b")]
    result = compare(*runs, settings())
    assert [(r.task, r.metric, r.comparison.n) for r in result.rows] == [("g", "acc", 180)]


def test_the_json_record_is_strict_json(tmp_path):
    """Six docs of a 1/6 baseline: the relative CI is unbounded, and is written as null, not Infinity."""
    scores = {"t": {"acc": [1, 0, 0, 0, 0, 0]}}
    result = compare(write_run(tmp_path / "a", scores), write_run(tmp_path / "b", scores), settings())
    assert result.verdict == "INCONCLUSIVE" and "unbounded" in result.rows[0].judgement.reason
    text = json.dumps(result.to_dict(), allow_nan=False)
    assert json.loads(text)["rows"][0]["comparison"]["relative_ci"]["high"] is None


@pytest.mark.parametrize("seed", range(6))
def test_identical_runs_never_fail_however_few_docs(tmp_path, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30))
    scores = {"bits": {"acc": (rng.random(n) < rng.random()).astype(int).tolist()},
              "reals": {"score": rng.normal(size=n).tolist()}}
    for max_drop in ("0.01", "1%"):
        result = compare(write_run(tmp_path / f"a{max_drop}", scores), write_run(tmp_path / f"b{max_drop}", scores),
                         settings(max_drop=max_drop))
        assert result.verdict != "FAIL" and all(r.change == "none shown" for r in result.rows)
