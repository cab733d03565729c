"""`lm-eval-baking compare` from the command line: exit codes, --json, the GitHub job summary, every refusal in
one line with nothing written, any damaged candidate, no torch, and real `lm_eval --log_samples` runs of the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from conftest import FEWSHOT_TASKS, one_line, run
from lm_eval_baking.cli import main
from lm_eval_output import STAMP, write_run

pytestmark = pytest.mark.usefixtures("isolated_evaluate")
BASE = (np.random.default_rng(0).random(300) < 0.7).astype(int).tolist()


def lose(values, count):
    out, lost = list(values), 0
    for i, v in enumerate(out):
        if v == 1 and lost < count:
            out[i], lost = 0, lost + 1
    return out


@pytest.fixture
def summary(tmp_path, monkeypatch):
    path = tmp_path / "step_summary.md"
    path.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(path))
    return path


@pytest.mark.parametrize("lost, options, code, verdict", [
    (0, [], 0, "PASS"),
    (90, ["--max-drop", "0.05"], 1, "FAIL"),
    (15, ["--max-drop", "0.05"], 3, "INCONCLUSIVE"),
    (15, ["--max-drop", "0.05", "--inconclusive", "pass"], 0, "INCONCLUSIVE"),
    (15, ["--max-drop", "0.05", "--inconclusive", "fail"], 1, "INCONCLUSIVE"),
])
def test_exit_codes_json_and_the_job_summary(capsys, tmp_path, summary, lost, options, code, verdict):
    a = write_run(tmp_path / "a", {"arc_easy": {"acc": BASE}})
    b = write_run(tmp_path / "b", {"arc_easy": {"acc": lose(BASE, lost)}})
    out_json = tmp_path / "out" / "compare.json"
    status, out, err = run(capsys, "compare", a, b, *options, "--json", out_json)
    assert status == code, err
    assert f"## lm-eval-baking compare: {verdict}" in out and "| arc_easy | acc ↑ | 300 |" in out
    record = json.loads(out_json.read_text())
    assert record["format"] == "lm-eval-baking/compare" and record["verdict"] == verdict
    assert record["rows"][0]["comparison"]["test"] == "mcnemar-exact"
    assert record["rows"][0]["judgement"]["verdict"] == verdict
    assert summary.read_text() == "earlier step\n" + out + "\n"


def _refusals(tmp_path):
    """(name, baseline, candidate, extra options, what the one line says) for every refusal."""
    scores = {"arc_easy": {"acc": BASE[:40]}}
    folders = iter(range(100))  # a folder of its own for every run

    def base(name, **kw):
        return write_run(tmp_path / f"{name}{next(folders)}", kw.pop("scores", scores), **kw)

    other_docs = [{"question": f"other {i}?", "label": 0} for i in range(40)]
    no_metric = {"arc_easy": {"acc": [None] * 40}}
    impossible = {"arc_easy": {"acc": [3] + BASE[1:40]}}
    same = base("same")
    return [
        ("doc hash", base("a"), base("b", docs={"arc_easy": other_docs}), [], "arc_easy: doc 0 is another document"),
        ("doc count", base("a"), base("b", scores={"arc_easy": {"acc": BASE[:30]}}), [],
         "arc_easy: the runs answered different docs (baseline 40, candidate 30, 30 in both)"),
        ("no samples", base("a"), base("b", samples=False), [], "rerun lm_eval with --log_samples"),
        ("metric not per doc", base("a"), base("b", scores=no_metric), [],
         "the candidate's per-doc output of arc_easy has no acc values"),
        ("n-shot", base("a"), base("b", n_shot=5), [], "arc_easy's n-shot (baseline 0, candidate 5)"),
        ("system instruction", base("a"), base("b", system_instruction="Be a pirate."), [],
         "system_instruction (baseline null, candidate Be a pirate.)"),
        ("chat template", base("a", chat_template="{{x}}"), base("b"), [], "--apply_chat_template"),
        ("multiturn", base("a", fewshot_as_multiturn=True), base("b", fewshot_as_multiturn=False), [],
         "--fewshot_as_multiturn"),
        ("task config", base("a"), base("b", task_config={"doc_to_text": "Q: {{question}}"}), [],
         "arc_easy's task config doc_to_text"),
        ("no shared task", base("a"), base("b", scores={"hellaswag": {"acc": BASE[:40]}}), [],
         "the runs share no task (baseline: arc_easy; candidate: hellaswag)"),
        ("impossible value", base("a"), base("b", scores=impossible), [], "acc is 3, outside its range [0, 1]"),
        ("same run", same, same / "__models__base" / f"results_{STAMP}.json", [],
         "the baseline and the candidate are the same run"),
        ("missing path", base("a"), tmp_path / "nowhere", [], "does not exist"),
        ("two runs in one folder", base("a"), write_run(base("b"), scores, stamp="2026-01-02T00-00-00.000000"), [],
         "holds two runs of arc_easy"),
        ("zero drop", base("a"), base("b"), ["--max-drop", "0"], "--max-drop 0 is not a number above 0"),
        ("word drop", base("a"), base("b"), ["--max-drop", "five"], "--max-drop five is not a number above 0"),
        ("cluster spec", base("a"), base("b"), ["--cluster", "arc_easy"], "--cluster arc_easy is not TASK=FIELD"),
    ]


REFUSALS = [  # the names of _refusals' cases
    "doc hash", "doc count", "no samples", "metric not per doc", "n-shot", "system instruction", "chat template",
    "multiturn", "task config", "no shared task", "impossible value", "same run", "missing path", "two runs in one folder", "zero drop",
    "word drop", "cluster spec"]


@pytest.mark.parametrize("name", REFUSALS)
def test_every_refusal_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, summary, name):
    cases = _refusals(tmp_path)
    assert [c[0] for c in cases] == REFUSALS
    _, a, b, options, says = next(c for c in cases if c[0] == name)
    out_json = tmp_path / "compare.json"
    status, out, err = run(capsys, "compare", a, b, *options, "--json", out_json)
    assert status == 2 and out == ""
    assert says in one_line(err)
    assert not out_json.exists() and summary.read_text() == "earlier step\n"


def test_compare_runs_without_torch_and_help_without_evaluate(tmp_path):
    a = write_run(tmp_path / "a", {"arc_easy": {"acc": BASE}})
    b = write_run(tmp_path / "b", {"arc_easy": {"acc": BASE}})
    script = ("import sys\nfrom lm_eval_baking.cli import main\n"
              "try:\n    code = main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
              "print('exit', code, 'torch' in sys.modules, 'evaluate' in sys.modules)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "m")}
    help_run = subprocess.run([sys.executable, "-c", script, "compare", "--help"], capture_output=True, text=True,
                              timeout=120, env=env)
    assert help_run.stdout.strip().endswith("exit 0 False False"), help_run.stderr[-2000:]
    compare_run = subprocess.run([sys.executable, "-c", script, "compare", str(a), str(b)], capture_output=True,
                                 text=True, timeout=120, env=env)
    assert compare_run.stdout.strip().endswith("exit 0 False True"), compare_run.stderr[-2000:]


def test_real_lm_eval_runs_of_the_tiny_model_and_its_bake(tiny_model_dir, small_bake, tmp_path, capsys):
    """The real lm_eval CLI with --log_samples: the base model twice (the same scores: PASS), then its bake
    through peft= (the task configs' metadata differ, which is no reason to refuse)."""
    lm_eval = str(Path(sys.executable).with_name("lm_eval"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH"))
                                         if p)}
    outputs = {}
    for name, model_args in (("base", f"pretrained={tiny_model_dir}"), ("again", f"pretrained={tiny_model_dir}"),
                             ("baked", f"pretrained={tiny_model_dir},peft={small_bake}")):
        outputs[name] = tmp_path / name
        subprocess.run([lm_eval, "--model", "hf", "--model_args", model_args,
                        "--tasks", "tiny_fewshot_colours,tiny_fewshot_sums", "--include_path", FEWSHOT_TASKS,
                        "--device", "cpu", "--batch_size", "8", "--output_path", str(outputs[name]), "--log_samples"],
                       check=True, capture_output=True, env=env, timeout=600)
    status, out, err = run(capsys, "compare", outputs["base"], outputs["again"], "--max-drop", "0.5",
                           "--json", tmp_path / "same.json")
    assert status == 0, err
    rows = json.loads((tmp_path / "same.json").read_text())["rows"]
    assert [(r["task"], r["metric"], r["comparison"]["test"], r["comparison"]["n"]) for r in rows] == [
        ("tiny_fewshot_colours", "acc", "mcnemar-exact", 6), ("tiny_fewshot_sums", "exact_match", "mcnemar-exact", 12)]
    assert "| tiny_fewshot_colours | acc ↑ | 6 |" in out
    status, out, err = run(capsys, "compare", outputs["base"], outputs["baked"], "--json", tmp_path / "baked.json")
    assert status in (0, 1, 3) and err == "", err
    assert len(json.loads((tmp_path / "baked.json").read_text())["rows"]) == 2


# ---------------------------------------------------------------------------- any damaged candidate

json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=3), max_leaves=8)
sample_rows = st.fixed_dictionaries({
    "doc_id": st.integers(0, 7) | json_values, "doc_hash": st.sampled_from(["h0", "h1"]) | json_values,
    "filter": st.just("none") | json_values, "metrics": st.just(["acc"]) | json_values,
    "acc": st.sampled_from([0, 1, 0.5, 3]) | json_values, "doc": json_values})
results_patches = st.dictionaries(st.sampled_from(["results", "n-shot", "configs", "higher_is_better", "group_subtasks",
                                                   "config", "system_instruction", "lm_eval_version"]),
                                  json_values, max_size=2)


@given(rows=st.lists(st.integers(0, 5) | sample_rows, max_size=8), patch=results_patches)
# A metric name that is a list (unhashable) once made every samples reader raise TypeError.
@example(rows=[{"doc_id": 0, "doc_hash": "h0", "filter": "none", "metrics": [[]], "acc": 0, "doc": None}], patch={})
def test_any_damaged_candidate_gives_a_verdict_or_one_error_line(tmp_path_factory, capsys, rows, patch):
    root = tmp_path_factory.mktemp("damaged")
    scores = {"arc_easy": {"acc": [1, 0, 1, 1, 0, 1]}}
    a, b = write_run(root / "a", scores), write_run(root / "b", scores)
    folder = b / "__models__base"
    results, samples = folder / f"results_{STAMP}.json", folder / f"samples_arc_easy_{STAMP}.jsonl"
    valid = samples.read_text().splitlines()
    samples.write_text("\n".join(valid[r] if isinstance(r, int) else json.dumps(r) for r in rows) + "\n")
    results.write_text(json.dumps({**json.loads(results.read_text()), **patch}))
    before = {p: p.read_bytes() for p in (*a.rglob("*.json*"), *b.rglob("*.json*"))}
    code = main(["compare", str(a), str(b)])
    if code == 2:
        one_line(capsys.readouterr().err)
    else:
        assert code in (0, 1, 3)
        capsys.readouterr()
    assert {p: p.read_bytes() for p in before} == before


def test_an_unwritable_modules_cache_is_one_line(capsys, tmp_path, monkeypatch):
    import evaluate

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", blocker / "modules")
    a = write_run(tmp_path / "a", {"arc_easy": {"acc": BASE}})
    b = write_run(tmp_path / "b", {"arc_easy": {"acc": BASE}})
    status, out, err = run(capsys, "compare", a, b, "--json", tmp_path / "c.json")
    assert status == 2 and out == "" and not (tmp_path / "c.json").exists()
    assert "set HF_MODULES_CACHE (or HF_HOME) to a writable folder" in one_line(err)
