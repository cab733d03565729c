"""The N×N cross-task matrix from per-doc scores: paired CIs, three-way verdicts, the gate's exit codes, the report."""

import json
import subprocess
import sys

import pytest

from lm_eval_baking.cli import main
from lm_eval_baking.constants import CROSS_TASK_FORMAT
from lm_eval_baking.errors import BakingError
from lm_eval_baking.results.cross_task import build_matrix, format_summary, judge_report
from lm_eval_baking.results.cross_task_record import CrossTaskRecord
from lm_eval_baking.results.plots import cross_task_heatmap

N = 200
TASKS = ["a", "b"]


def docs(rate: float) -> list[float]:
    """N 0/1 scores with mean `rate`: the first docs right, so a higher rate is right on a superset of docs."""
    right = round(rate * N)
    return [1.0] * right + [0.0] * (N - right)


def scores(*, a_on_b: list[float] | None = None, bake_a_gain: float = 0.4) -> dict:
    """Base 0-shot 0.2 / k-shot 0.6 on both tasks; each bake's 0-shot gain on its own task; nothing else changes."""
    base = {task: {"0": {"per_doc": docs(0.2)}, "k": {"per_doc": docs(0.6)}} for task in TASKS}
    own = lambda gain: {"0": {"per_doc": docs(0.2 + gain)}, "k": {"per_doc": docs(0.6)}}  # noqa: E731
    return {
        "base": base,
        "a": {"a": own(bake_a_gain), "b": {"0": {"per_doc": a_on_b if a_on_b is not None else docs(0.2)}}},
        "b": {"b": own(0.4), "a": {"0": {"per_doc": docs(0.2)}}},
    }


def report_of(matrix_scores, **kwargs) -> dict:
    return {"format": CROSS_TASK_FORMAT, "base_model": "m", "form": "chat", "tasks": TASKS, "num_fewshot": {"a": 8, "b": 8},
            "scores": matrix_scores, "matrix": build_matrix(TASKS, matrix_scores, **kwargs)}


def test_unchanged_tasks_pass_and_the_diagonal_keeps_its_gain():
    matrix = build_matrix(TASKS, scores())
    off = matrix["cells"]["a"]["b"]
    assert off["difference"] == 0 and not off["changed"] and off["verdict"] == "PASS"
    own = matrix["cells"]["b"]["b"]
    assert own["kshot_gain"] == pytest.approx(0.4) and own["gain"] == pytest.approx(0.4)
    assert own["share"] == pytest.approx(1.0) and own["verdict"] == "PASS" and own["changed"]
    assert own["baked_kshot"] == pytest.approx(0.6) and own["reprompt_vs_base_kshot"] == 0
    assert matrix["cell_confidence"] == pytest.approx(1 - 0.05 / 4)
    assert matrix["verdict"] == "PASS"


def test_a_clear_drop_fails_and_a_small_one_is_inconclusive():
    failing = build_matrix(TASKS, scores(a_on_b=[0.0] * N))
    assert failing["cells"]["a"]["b"]["verdict"] == "FAIL" and failing["verdict"] == "FAIL"
    # one doc of 40 lost: a 2.5% drop whose CI reaches past 3.4%
    small = docs(0.2)
    small[small.index(1.0)] = 0.0
    unsure = build_matrix(TASKS, scores(a_on_b=small))["cells"]["a"]["b"]
    assert unsure["verdict"] == "INCONCLUSIVE" and unsure["docs_to_resolve"] > N and not unsure["changed"]


def test_a_bake_that_keeps_little_of_the_gain_fails_its_own_cell():
    matrix = build_matrix(TASKS, scores(bake_a_gain=0.02))
    own = matrix["cells"]["a"]["a"]
    assert own["share"] < 0.2 and own["share_ci"][1] < 0.5 and own["verdict"] == "FAIL"


def test_a_base_score_of_zero_cannot_drop():
    zero = scores(a_on_b=[0.0] * N)
    zero["base"]["b"]["0"]["per_doc"] = [0.0] * N
    assert build_matrix(TASKS, zero)["cells"]["a"]["b"]["verdict"] == "PASS"


def test_missing_scores_are_one_clear_error():
    broken = scores()
    del broken["a"]["b"]
    with pytest.raises(BakingError, match="lack the bake of a on b at 0 shots"):
        build_matrix(TASKS, broken)


def test_summary_heatmap_and_rejudging():
    report = CrossTaskRecord.from_dict(report_of(scores(a_on_b=[0.0] * N)), "the test's report")
    text = format_summary(report)
    assert "FAIL: bake of a on b" in text and "verdict: FAIL" in text
    assert cross_task_heatmap(report).startswith(b"\x89PNG")
    assert judge_report(report, max_forgetting_drop_pct=100)["cells"]["a"]["b"]["verdict"] == "PASS"


@pytest.mark.parametrize("a_on_b, threshold, code", [(None, None, 0), ([0.0] * N, None, 1), ([0.0] * N, "100", 0)])
def test_check_matrix_exit_codes(tmp_path, a_on_b, threshold, code, capsys):
    (tmp_path / "cross_task.json").write_text(json.dumps(report_of(scores(a_on_b=a_on_b))))
    assert main(["check-matrix", str(tmp_path)] + (["--max-forgetting-drop-pct", threshold] if threshold else [])) == code


def test_check_matrix_inconclusive_and_bad_input(tmp_path, capsys):
    small = docs(0.2)
    small[small.index(1.0)] = 0.0
    (tmp_path / "cross_task.json").write_text(json.dumps(report_of(scores(a_on_b=small))))
    assert main(["check-matrix", str(tmp_path)]) == 3
    (tmp_path / "cross_task.json").write_text("{}")
    assert main(["check-matrix", str(tmp_path)]) == 2
    assert "is not a lm-eval-baking/cross-task record" in capsys.readouterr().err


def test_report_has_a_cross_task_section_without_torch(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "cross_task.json").write_text(json.dumps(report_of(scores())))
    script = ("import sys\nfrom lm_eval_baking.cli import main\ncode = main(sys.argv[1:])\n"
              "assert 'torch' not in sys.modules\nprint('exit', code)\n")
    run = subprocess.run([sys.executable, "-c", script, "report", str(run_dir), "--output", str(tmp_path / "report")],
                         capture_output=True, text=True, timeout=120)
    assert "exit 0" in run.stdout, run.stderr[-2000:]
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "## Cross-task: own task" in markdown and "## Cross-task matrix" in markdown
    assert (tmp_path / "report" / "cross_task_1.png").is_file()


def test_a_cross_task_json_written_with_threshold_pct_reads_and_rewrites_it_as_max_forgetting_drop_pct(tmp_path):
    """Files written before issue 26 name the allowed drop `threshold_pct`: they read, and judge, the same."""
    old = report_of(scores(a_on_b=[0.0] * N), max_forgetting_drop_pct=100)
    old["matrix"]["threshold_pct"] = old["matrix"].pop("max_forgetting_drop_pct")
    (tmp_path / "cross_task.json").write_text(json.dumps(old))
    record = CrossTaskRecord.from_pretrained(tmp_path)
    assert record.matrix["max_forgetting_drop_pct"] == 100 and "threshold_pct" not in record.matrix
    assert judge_report(record)["verdict"] == "PASS"  # judged at the stored 100%, not the default
    assert main(["check-matrix", str(tmp_path / "cross_task.json")]) == 0
    record.save_pretrained(tmp_path / "again")
    again = json.loads((tmp_path / "again" / "cross_task.json").read_text())
    assert again["matrix"]["max_forgetting_drop_pct"] == 100 and "threshold_pct" not in again["matrix"]
