"""Property-based tests (hypothesis): any file a user can hand us is either used or refused with one
BakingError (CLI: one `lm-eval-baking: error:` line, exit 2), never a traceback, and never modified.

No model is loaded inside a property: the inputs are checked before any model is needed. The cases come
from the hypothesis profile loaded in conftest.py ("ci": the same 150 per property on every run;
"explore": 1,000 new ones); `pytest --hypothesis-show-statistics` prints what each one ran.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lm_eval_baking import BakingError
from lm_eval_baking.cli import main
from lm_eval_baking.core.questions import load_questions

PROPERTY = settings()  # the profile's cases (conftest.py)
# Each case of the report property renders a report: 40 in the ci profile, the full count when exploring.
REPORT_CASES = 40 if settings().max_examples <= 150 else settings().max_examples

# JSON values of every type, nested a little: what a damaged or hand-edited file may hold.
json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)
# Text with the characters that break naive line handling.
awkward_text = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(
    ["\n", "\r", "\u2028", "\u2029", "\x85", "\x0c", "\ufeff", "\x00", "#", "{", "}", '"', " "]), max_size=200)


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=True)


def write(folder: Path, name: str, content: bytes | str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content)
    return path


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("lm-eval-baking: error: ")
    return lines[0]


# ---------------------------------------------------------------------------- question files


def check_questions(path: Path) -> None:
    before = path.read_bytes()
    try:
        questions = load_questions(path)
    except BakingError as e:
        assert "\n" not in str(e)
    else:
        assert questions and all(q.text and q.text == q.text.strip() for q in questions)
        assert len({q.text for q in questions}) == len(questions)
    assert path.read_bytes() == before


@PROPERTY
@given(content=st.binary(max_size=300) | awkward_text, suffix=st.sampled_from([".txt", ".jsonl", ""]))
def test_any_question_file_is_used_or_refused_clearly(content, suffix):
    with tempfile.TemporaryDirectory() as folder:
        check_questions(write(Path(folder), f"questions{suffix}", content))


@PROPERTY
@given(rows=st.lists(json_values | st.fixed_dictionaries({"question": json_values}, optional={"category": json_values}),
                     max_size=6))
def test_any_jsonl_question_rows_are_used_or_refused_clearly(rows):
    with tempfile.TemporaryDirectory() as folder:
        check_questions(write(Path(folder), "questions.jsonl", "\n".join(_dumps(r) for r in rows)))


@PROPERTY
@given(questions=st.lists(awkward_text.filter(lambda t: t.strip()), min_size=1, max_size=5))
def test_questions_written_as_jsonl_read_back_exactly(questions):
    """Characters such as U+2028 inside a question must not split it (str.splitlines would)."""
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), "q.jsonl", "\n".join(_dumps({"question": q}) for q in questions))
        expected = list(dict.fromkeys(q.strip() for q in questions))
        assert [q.text for q in load_questions(path)] == expected


# ---------------------------------------------------------------------------- prompt files (CLI)


@PROPERTY
@given(content=st.binary(max_size=200) | awkward_text)
def test_any_prompt_file_gives_one_error_line_never_a_traceback(content, capsys):
    """The question file does not exist, so a usable prompt fails there: the prompt is judged first."""
    with tempfile.TemporaryDirectory() as folder:
        prompt = write(Path(folder), "prompt.txt", content)
        before = prompt.read_bytes()
        code = main(["bake", "--prompt-file", str(prompt), "--questions", str(Path(folder) / "missing.txt"),
                     "--output", str(Path(folder) / "out"), "--quiet"])
        line = one_error_line(capsys)
        assert code == 2 and prompt.read_bytes() == before and not (Path(folder) / "out").exists()
        try:
            usable = bool(before.decode("utf-8").strip())
        except UnicodeDecodeError:
            usable = False
        assert ("question file" in line) == usable, line


# ---------------------------------------------------------------------------- bake data files (lm_eval loaders)

heldout_rows = st.fixed_dictionaries(
    {"question": json_values | st.text(max_size=20), "answer": json_values | st.text(max_size=20),
     "teacher_logprob": json_values | st.floats(max_value=0), "base_logprob": json_values | st.floats(max_value=0),
     "n_tokens": json_values | st.integers(-2, 50)},
) | json_values


def bake_folder(folder: Path, name: str, lines: list[str]) -> Path:
    write(folder, "baking.json", _dumps({"format": "lm-eval-baking/bake"}))
    return write(folder, name, "\n".join(lines))


@PROPERTY
@given(lines=st.lists(heldout_rows.map(_dumps) | awkward_text, max_size=5))
def test_any_heldout_file_is_scored_or_refused_clearly(lines):
    from lm_eval_baking.evals.lm_tasks import mckl_dataset, mckl_process_results

    with tempfile.TemporaryDirectory() as folder:
        path = bake_folder(Path(folder), "data/heldout.jsonl", lines)
        before = path.read_bytes()
        try:
            docs = mckl_dataset(bake=folder)["test"]
        except BakingError as e:
            assert "\n" not in str(e)
        else:
            for doc in docs:  # what lm_eval does with each doc must work too
                scores = mckl_process_results(doc, [(-1.0, False)])
                assert all(math.isfinite(v) for v in (scores["kl_per_token"], scores["kl_per_sequence"]))
        assert path.read_bytes() == before


drift_docs = st.fixed_dictionaries(
    {"persona": json_values, "turn": json_values | st.integers(0, 40), "probe": json_values | st.text(max_size=20),
     "messages": json_values | st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]),
                                                                "content": st.text(max_size=20)}), max_size=3),
     "scorer": json_values, "references": json_values | st.lists(st.text(max_size=10), max_size=3)},
) | json_values


@PROPERTY
@given(lines=st.lists(drift_docs.map(_dumps) | awkward_text, max_size=4))
def test_any_drift_docs_file_loads_or_is_refused_clearly(lines):
    from lm_eval_baking.constants import DRIFT_DOCS as DOCS_FILE
    from lm_eval_baking.evals.lm_tasks import drift_dataset as load_drift_dataset

    with tempfile.TemporaryDirectory() as folder:
        path = bake_folder(Path(folder), DOCS_FILE, lines)
        before = path.read_bytes()
        try:
            load_drift_dataset(bake=folder)
        except BakingError as e:
            assert "\n" not in str(e)
        assert path.read_bytes() == before


# ---------------------------------------------------------------------------- bake records and adapters

@PROPERTY
@given(record=json_values | st.fixed_dictionaries({"format": st.just("lm-eval-baking/bake"), "config": json_values,
                                                    "kl": json_values, "base_model": json_values}),
       raw=st.none() | st.binary(max_size=50))
def test_any_bake_record_at_the_output_is_reused_or_refused_clearly(record, raw):
    """bake() reads the record already at --output before loading anything."""
    from lm_eval_baking import bake

    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "out"
        path = write(output, "baking.json", raw if raw is not None else _dumps(record))
        before = path.read_bytes()
        try:
            bake(prompt="You are a pirate.", output=output, questions=str(Path(folder) / "missing.txt"),
                 progress=False)
        except BakingError as e:
            assert "\n" not in str(e)
        assert path.read_bytes() == before


@PROPERTY
@given(config=st.none() | json_values | st.binary(max_size=40), weights=st.none() | st.binary(max_size=80),
       pickled=st.booleans(), record=st.none() | json_values)
def test_any_adapter_folder_is_accepted_or_refused_clearly(config, weights, pickled, record):
    from lm_eval_baking.artifacts.safety import check_adapter, read_adapter_weights

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        if config is not None:
            write(folder, "adapter_config.json", config if isinstance(config, bytes) else _dumps(config))
        if weights is not None:
            write(folder, "adapter_model.bin" if pickled else "adapter_model.safetensors", weights)
        if record is not None:
            write(folder, "baking.json", _dumps(record))
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        try:
            read_adapter_weights(check_adapter(folder))
        except BakingError as e:
            assert "\n" not in str(e)
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


# ---------------------------------------------------------------------------- result files (report and gate)

metric_keys = st.sampled_from(["quality,none", "kl_per_token,none", "kl_per_token_stderr,none", "acc,none",
                               "adherence,none", "drift,none", "alias"]) | st.text(max_size=12)
results_files = st.fixed_dictionaries(
    {"results": st.dictionaries(st.sampled_from(["baking_mckl", "baking_persona_drift", "x"]) | st.text(max_size=8),
                                st.dictionaries(metric_keys, json_values | st.floats()), max_size=3) | json_values,
     "lm_eval_version": st.sampled_from(["0.4.13", "0.3.0"]) | json_values,
     "config": st.fixed_dictionaries({"model_args": st.sampled_from(["pretrained=base,peft=adapters/p",
                                                                     "pretrained=base"]) | json_values}) | json_values},
    optional={"higher_is_better": json_values, "system_instruction": json_values, "date": json_values,
              "group_subtasks": json_values, "model_name": json_values},
) | json_values


@PROPERTY
@given(files=st.lists(results_files.map(_dumps) | st.binary(max_size=60), min_size=1, max_size=3),
       bound=st.sampled_from(["quality=0.5", "kl=0.1", "baking_mckl:quality=0", "nonsense", "quality=abc"]))
def test_any_results_files_give_a_verdict_or_one_error_line(files, bound, capsys):
    with tempfile.TemporaryDirectory() as folder:
        paths = [write(Path(folder), f"results_{i}.json", f) for i, f in enumerate(files)]
        before = [p.read_bytes() for p in paths]
        code = main(["check", folder, "--min", bound])
        if code == 2:
            one_error_line(capsys)
        else:
            assert code in (0, 1, 3)  # pass, fail, inconclusive
            capsys.readouterr()
        assert [p.read_bytes() for p in paths] == before


@settings(max_examples=REPORT_CASES)
@given(files=st.lists(results_files.map(_dumps), min_size=1, max_size=2))
def test_any_results_files_make_a_report_or_one_error_line(files, capsys):
    with tempfile.TemporaryDirectory() as folder:
        inputs = Path(folder) / "in"
        paths = [write(inputs, f"results_{i}.json", f) for i, f in enumerate(files)]
        code = main(["report", str(inputs), "--output", str(Path(folder) / "report")])
        if code:
            assert code == 2
            one_error_line(capsys)
        capsys.readouterr()
        assert all(p.is_file() for p in paths)


USABLE_RESULTS = {"results": {"x": {"acc,none": 0.5}}, "lm_eval_version": "0.4.13",
                  "config": {"model_args": "pretrained=base,peft=adapters/p"}}


@pytest.mark.parametrize("damage, field", [
    ({"config": ["pretrained=base"]}, "config"),
    ({"config": {"model_args": 7}}, "config.model_args"),
    ({"config": {"model_args": {"pretrained": ["base"]}}}, "pretrained"),
    ({"config": {"model_args": {"pretrained": "base", "peft": "a\x00b"}}}, "peft"),
    ({"group_subtasks": True}, "group_subtasks"),
    ({"group_subtasks": {"g": "abc"}}, "group_subtasks.g"),
    ({"system_instruction": [None]}, "system_instruction"),
    ({"higher_is_better": {"x": {"acc": "yes"}}}, "higher_is_better.x.acc"),
    ({"date": "yesterday"}, "date"),
    ({"lm_eval_version": "0.3\nsecond line"}, "lm_eval"),
])
def test_a_malformed_results_file_is_skipped_naming_the_field(damage, field, tmp_path, capsys):
    from lm_eval_baking.results.report import build_report

    write(tmp_path / "in", "results_good.json", _dumps(dict(USABLE_RESULTS, config={"model_args": "pretrained=base"})))
    write(tmp_path / "in", "results_bad.json", _dumps(dict(USABLE_RESULTS, **damage)))
    report = build_report([tmp_path / "in"], tmp_path / "report")
    (skipped,) = report.collection.skipped
    assert skipped.path.endswith("results_bad.json") and field in skipped.reason and "\n" not in skipped.reason
    assert [row.label for row in report.collection.rows] == ["base"]  # the bad file leaves no row behind
    assert main(["check", str(tmp_path / "in"), "--min", "x:acc=0"]) == 2
    assert "results_bad.json cannot be used" in one_error_line(capsys)


@pytest.mark.parametrize("text, reason", [
    ('{"results": {"t": {"acc,none": 1}}, "lm_eval_version": "0.4.13", "model_name": "\\ud800"}', "lone surrogate"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_json_that_cannot_be_reported_is_skipped(text, reason, tmp_path):
    from lm_eval_baking.results.collect import collect

    write(tmp_path, "results_good.json", _dumps(USABLE_RESULTS))
    write(tmp_path, "results_bad.json", text)
    (skipped,) = collect([tmp_path]).skipped
    assert reason in skipped.reason


def test_a_metric_too_large_for_a_float_is_not_a_number(tmp_path):
    from lm_eval_baking.results.collect import collect

    write(tmp_path, "results_good.json", _dumps(USABLE_RESULTS))
    write(tmp_path, "results_bad.json", _dumps(USABLE_RESULTS)[:-1] + ', "results": {"x": {"acc,none": 1' + "0" * 400
          + "}}}")
    (skipped,) = collect([tmp_path]).skipped
    assert "no numeric metric" in skipped.reason


# ---------------------------------------------------------------------------- a work folder left by a crash

@PROPERTY
@given(state=st.binary(max_size=60) | json_values.map(_dumps)
       | st.fixed_dictionaries({"format": st.just("lm-eval-baking/partial"), "identity": json_values}).map(_dumps))
# Found by a random run: a stored setting whose name holds a newline split the "other settings" error in two.
@example(state=_dumps({"format": "lm-eval-baking/partial", "identity": {"config": {"a\nb": 1}}}))
def test_any_damaged_work_folder_is_refused_clearly(state):
    from lm_eval_baking.training.workdir import WorkDir

    with tempfile.TemporaryDirectory() as folder:
        work = WorkDir(Path(folder) / "out")
        path = write(work.path, "state.json", state)
        before = path.read_bytes()
        try:
            work.adopt({"config": {"prompt": "x"}})
        except BakingError as e:
            assert "\n" not in str(e)
        finally:
            work.release()
        assert path.read_bytes() == before
