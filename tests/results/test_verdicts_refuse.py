"""`check` and `check-matrix` never PASS what cannot be right (issue 22): values outside their metric's range
are refused in one line, a missing or unbounded CI is INCONCLUSIVE, and inputs that are not results say why.

Everything is in-process on hand-written lm_eval 0.4 results files: no model, seconds in all.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lm_eval_baking.core.stats import compare_paired
from lm_eval_baking.core.verdicts import (
    Verdict, impossible_value, judge, judge_bound, metric_range, refuse_impossible,
)
from lm_eval_baking.errors import BakingError

from conftest import one_line, run

MCKL = "baking_mckl"


def results_file(folder: Path, metrics: dict, *, task: str = MCKL, samples: list[dict] | None = None,
                 model_args: str = "pretrained=BASE,peft=ADAPTER") -> Path:
    """An lm_eval 0.4 results file (and its --log_samples file) with `metrics` ("name,none": value) for `task`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results_2026-01-01T00-00-00.json"
    data = {"results": {task: {"alias": task, **metrics}},
            "higher_is_better": {task: {"kl_per_token": False, "quality": True, "acc": True}},
            "config": {"model_args": model_args}, "lm_eval_version": "0.4.13", "date": 1.0}
    path.write_text(json.dumps(data))  # json writes inf as Infinity, as lm_eval does
    if samples is not None:
        lines = [json.dumps({"doc_id": i, "filter": "none", "doc_hash": str(i), **s}) for i, s in enumerate(samples)]
        (folder / f"samples_{task}_2026-01-01T00-00-00.jsonl").write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------- values outside their range


@pytest.mark.parametrize("metrics, option, shown", [
    ({"quality,none": 3.5, "quality_ci_low,none": 3.4, "quality_ci_high,none": 3.6}, ("--min-quality", "0.8"),
     "baking_mckl:quality is 3.5 (95% CI [3.4, 3.6]), outside its range (-inf, 1]"),
    ({"kl_per_token,none": -0.5, "kl_per_token_stderr,none": 0.01}, ("--max-kl", "0.1"),
     "baking_mckl:kl_per_token is -0.5 (95% CI [-0.5196, -0.4804]), outside its range [0, inf)"),
])
def test_check_refuses_an_impossible_value_naming_file_metric_value_and_range(tmp_path, capsys, metrics, option,
                                                                                shown):
    path = results_file(tmp_path / "r", metrics)
    before = path.read_bytes()
    code, out, err = run(capsys, "check", tmp_path / "r", *option)
    line = one_line(err)
    assert code == 2 and out == ""
    assert line == (f"lm-eval-baking: error: {path}: {shown}, so the file is damaged or was edited by hand; "
                    "re-run the evaluation that wrote it")
    assert path.read_bytes() == before


def test_an_estimate_outside_its_range_without_a_ci_is_inconclusive_and_says_so(tmp_path, capsys):
    """Without a CI, sampling noise (one held-out answer) cannot be told from a damaged file: never PASS."""
    results_file(tmp_path / "r", {"quality,none": 3.5})
    code, out, err = run(capsys, "check", tmp_path / "r", "--min-quality", "0.8")
    assert code == 3 and err == "" and "0 passed" in out
    assert "not judged" in out and "3.5 is outside quality's range (-inf, 1]" in out


def test_an_accuracy_above_1_is_refused_on_any_task(tmp_path, capsys):
    results_file(tmp_path / "r", {"acc,none": 1.7, "acc_stderr,none": 0.01}, task="arc_easy")
    code, _, err = run(capsys, "check", tmp_path / "r", "--min", "arc_easy:acc=0.5")
    assert code == 2 and "arc_easy:acc is 1.7, outside its range [0, 1]" in one_line(err)


def test_an_impossible_baseline_value_is_refused_too(tmp_path, capsys):
    good = {"kl_per_token,none": 0.05, "kl_per_token_stderr,none": 0.01}
    results_file(tmp_path / "now", good)
    old = results_file(tmp_path / "old", {"kl_per_token,none": -0.5, "kl_per_token_stderr,none": 0.01})
    code, _, err = run(capsys, "check", tmp_path / "now", "--baseline", tmp_path / "old")
    assert code == 2 and one_line(err).startswith(f"lm-eval-baking: error: {old}: baking_mckl:kl_per_token is -0.5")


def test_estimation_noise_just_outside_the_range_is_not_refused(tmp_path, capsys):
    """A good adapter's MC-KL can come out a little below 0 (quality a little above 1): its CI reaches back in."""
    results_file(tmp_path / "r", {"kl_per_token,none": -0.002, "kl_per_token_stderr,none": 0.004,
                                  "quality,none": 1.01, "quality_ci_low,none": 0.97, "quality_ci_high,none": 1.05})
    code, out, err = run(capsys, "check", tmp_path / "r", "--max-kl", "0.1", "--min-quality", "0.8")
    assert code == 0 and err == "" and "2 passed" in out


def test_the_range_rule_is_one_table():
    assert metric_range("kl") == (-math.inf, math.inf)  # a column name is not an lm_eval metric
    assert metric_range("kl_per_token") == metric_range("baking_mckl:kl_per_token") == (0.0, math.inf)
    assert metric_range("acc,flexible-extract") == metric_range("arc_easy:acc") == (0.0, 1.0)
    assert metric_range("bleu") == (-math.inf, math.inf)
    assert impossible_value("acc", 1.0 + 1e-9) is False  # float rounding
    assert impossible_value("acc", float("nan")) is True
    assert impossible_value("quality", 3.5, (0.9, 4.0)) is False  # an estimate whose CI reaches its range
    assert impossible_value("acc", 1.5, (0.9, 2.0)) is True  # a mean of 0/1 scores cannot be 1.5 at all
    assert impossible_value("quality", 3.5) is False  # an estimate without a CI: INCONCLUSIVE, not refused
    with pytest.raises(BakingError, match=r"^F: drift is -1.5, outside its range \[-1, 1\]"):
        refuse_impossible("drift", -1.5, None, "F")


def test_impossible_thresholds_read_the_same_table(tmp_path, capsys):
    results_file(tmp_path / "r", {"kl_per_token,none": 0.05, "kl_per_token_stderr,none": 0.01})
    code, _, err = run(capsys, "check", tmp_path / "r", "--min", "baking_mckl:kl_per_token=-1", "--max-kl", "-1")
    assert code == 2 and "--max-kl -1 can never pass: kl is at least 0" in one_line(err)
    code, _, err = run(capsys, "check", tmp_path / "r", "--min", "arc_easy:acc=1.5")
    assert code == 2 and "can never pass: arc_easy:acc is at most 1" in one_line(err)


# ---------------------------------------------------------------------------- no CI, or an unbounded one


def test_one_heldout_answer_with_an_unbounded_quality_ci_is_inconclusive_never_pass(tmp_path, capsys):
    """lm_eval writes the CI of one held-out answer as -Infinity/Infinity; the one per-doc pair gives none either."""
    results_file(tmp_path / "r", {"quality,none": 0.95, "quality_ci_low,none": -math.inf,
                                  "quality_ci_high,none": math.inf}, samples=[{"quality": [0.01, 0.2]}])
    code, out, err = run(capsys, "check", tmp_path / "r", "--min-quality", "0.8")
    assert code == 3 and err == ""
    assert "INCONCLUSIVE" in out and "PASS" not in out.replace("passed", "")
    assert "no 95% CI (no lm_eval stderr, no per-doc output of 2+ docs): not judged" in out
    assert run(capsys, "check", tmp_path / "r", "--min-quality", "0.8", "--inconclusive", "fail")[0] == 1


def test_a_metric_without_stderr_or_per_doc_output_is_inconclusive(tmp_path, capsys):
    results_file(tmp_path / "r", {"acc,none": 0.9, "acc_stderr,none": "N/A"}, task="arc_easy")
    code, out, _ = run(capsys, "check", tmp_path / "r", "--min", "arc_easy:acc=0.5")
    assert code == 3 and "INCONCLUSIVE" in out and "0 passed" in out


@pytest.mark.parametrize("ci", [(-math.inf, 0.99), (0.85, math.inf), (float("nan"), 0.9), None])
@pytest.mark.parametrize("bound, limit", [("min", 0.8), ("max", 1.0)])
def test_judge_bound_never_passes_or_fails_without_a_finite_ci(ci, bound, limit):
    verdict, note = judge_bound(0.9, ci, bound, limit, docs=10)
    assert verdict is Verdict.INCONCLUSIVE and "not judged" in note


def test_judge_bound_three_ways_on_a_finite_ci():
    assert judge_bound(0.9, (0.85, 0.95), "min", 0.8)[0] is Verdict.PASS
    assert judge_bound(0.7, (0.65, 0.75), "min", 0.8)[0] is Verdict.FAIL
    verdict, note = judge_bound(0.82, (0.78, 0.86), "min", 0.8, docs=50)
    assert verdict is Verdict.INCONCLUSIVE and note == "about 200 docs would resolve it"


def test_a_paired_judgement_with_an_unbounded_ci_is_inconclusive():
    comparison = compare_paired([1.0, 0.0, 1.0, 1.0], [1.0, 0.0, 1.0, 1.0], n_boot=200)
    assert judge(comparison, 0.034, relative=True).verdict is Verdict.PASS  # an identical bake: within any bound
    from dataclasses import replace

    from lm_eval_baking.core.stats import Interval

    unbounded = replace(comparison, relative_ci=Interval(-0.01, math.inf, 0.95))
    judged = judge(unbounded, 0.034, relative=True)
    assert judged.verdict is Verdict.INCONCLUSIVE and "unbounded" in judged.reason


# ---------------------------------------------------------------------------- check-matrix


def _matrix(tmp_path: Path, base_scores: list, metric: str = "acc") -> Path:
    scores = {"base": {"t": {"0": {"metric": metric, "per_doc": base_scores}, "k": {"metric": metric,
                                                                                 "per_doc": [1.0] * 4}}},
              "t": {"t": {"0": {"metric": metric, "per_doc": [1.0] * 4}}}}
    path = tmp_path / "cross_task.json"
    path.write_text(json.dumps({"format": "lm-eval-baking/cross-task", "tasks": ["t"], "scores": scores,
                                "matrix": {}}))
    return path


def test_check_matrix_refuses_a_per_doc_score_outside_its_range(tmp_path, capsys):
    from lm_eval_baking.constants import CROSS_TASK_FORMAT

    path = _matrix(tmp_path, [0.0, 3.5, 0.0, 0.0])
    assert json.loads(path.read_text())["format"] == CROSS_TASK_FORMAT
    code, _, err = run(capsys, "check-matrix", path)
    assert code == 2 and one_line(err) == (
        "lm-eval-baking: error: the cross-task scores of base on t: acc is 3.5, outside its range [0, 1], "
        "so the file is damaged or was edited by hand; re-run the evaluation that wrote it")
    code, _, err = run(capsys, "check-matrix", _matrix(tmp_path, [0.0, "x", 0.0, 0.0]))
    assert code == 2 and "hold x, not a number" in one_line(err)


# ---------------------------------------------------------------------------- inputs that are not results


def test_check_on_a_bake_folder_says_what_it_holds_and_what_to_pass(tmp_path, capsys):
    bake = tmp_path / "bake"
    bake.mkdir()
    (bake / "baking.json").write_text(json.dumps({"format": "lm-eval-baking/bake", "format_version": 1,
                                                  "config": {"prompt": "p"}, "base_model": {"name": "default"}}))
    code, _, err = run(capsys, "check", bake, "--min-quality", "0.8")
    line = one_line(err)
    assert code == 2 and "choose from: " not in line
    assert line == (f"lm-eval-baking: error: no lm_eval results to judge, only {bake}/baking.json; `check` judges "
                    "lm_eval results_*.json; run lm_eval on the bake (the command `bake` printed) with --output_path "
                    "DIR --log_samples and pass DIR")


@pytest.mark.parametrize("name, text, reason", [
    ("results_x.json", "[1, 2]", "not a JSON object but a list"),
    ("r.json", '{"a": 1}', "not an lm_eval results file (no 'results' object)"),
    ("r.json", '"text"', "not a JSON object but a string"),
])
def test_check_on_a_file_that_is_not_results_names_what_is_wrong(tmp_path, capsys, name, text, reason):
    path = tmp_path / name
    path.write_text(text)
    code, _, err = run(capsys, "check", path, "--min-quality", "0.8")
    assert code == 2 and one_line(err) == (f"lm-eval-baking: error: {path} cannot be used: {reason}; pass lm_eval 0.4 "
                                           "results (results_*.json) or their --output_path folder")


def test_files_of_other_names_named_beside_results_are_still_ignored(tmp_path, capsys):
    """`check out/*` names samples and adapter configs too: only when nothing else is usable is a .json read."""
    results = results_file(tmp_path / "r", {"kl_per_token,none": 0.05, "kl_per_token_stderr,none": 0.01},
                           samples=[{"kl_per_token": 0.05}])
    (tmp_path / "r" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    named = sorted((tmp_path / "r").iterdir())
    assert len(named) == 3 and results in named
    code, out, err = run(capsys, "check", *named, "--max-kl", "0.1")
    assert code == 0 and err == "" and "1 passed" in out
