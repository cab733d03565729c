"""Every limit checked before any model work (issue 22, items 4 and 7): numbers that cannot be right, question files
that are not files, questions longer than the context, broken weights, full disks and read-only outputs. Each case
runs through the CLI as a user meets it: exit 2, one `lm-eval-baking: error:` line, no traceback, and nothing
created or changed on disk."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from lm_eval_baking.cli import main

from conftest import PIRATE

TINY_BAKE = ["--samples-per-question", "2", "--heldout-samples-per-question", "1", "--max-new-tokens", "8",
             "--epochs", "1", "--batch-size", "4", "--lora-rank", "4", "--lora-alpha", "8", "--precision", "fp32",
             "--quiet"]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for a folder), so 'nothing created or changed' is exact."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*")) if not p.is_fifo()}


def refused(capsys, folder: Path, *args) -> str:
    """Run the CLI; assert it exits 2 with one error line and leaves `folder` as it was; return the line."""
    before = snapshot(folder)
    code = main([str(a) for a in args])
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("lm-eval-baking: error: "), err
    assert "Traceback" not in err
    assert snapshot(folder) == before, "a refused command changed what is on disk"
    return lines[0]


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if a model's weights are loaded: every limit here is checked before that."""
    import lm_eval_baking.core.models as models

    def refuse(*_, **__):
        raise AssertionError("the model's weights were loaded before the limits were checked")

    monkeypatch.setattr(models, "load_model", refuse)


def bake_args(tiny_model_dir, questions, output, *extra):
    return ["bake", "--prompt", PIRATE, "--model", tiny_model_dir, "--questions", questions, *TINY_BAKE,
            "--output", output, *extra]


# ---------------------------------------------------------------------------- numbers that cannot be right

@pytest.mark.parametrize("flag, value, message", [
    ("--learning-rate", "1e300", "--learning-rate must be a finite number above 0 and at most 1 (got 1e+300)"),
    ("--learning-rate", "inf", "--learning-rate must be a finite number above 0 and at most 1 (got inf)"),
    ("--learning-rate", "nan", "--learning-rate must be a finite number above 0 and at most 1 (got nan)"),
    ("--learning-rate", "0", "--learning-rate must be a finite number above 0"),
    ("--temperature", "inf", "--temperature must be a finite number above 0"),
    ("--lora-alpha", "1e300", "--lora-alpha must be a finite number above 0"),
    ("--heldout-fraction", "nan", "--heldout-fraction must be between 0 and 1"),
    ("--checkpoint-seconds", "nan", "--checkpoint-seconds must be a finite number, 0 or more"),
])
def test_a_float_setting_that_cannot_be_right_is_refused_before_any_work(flag, value, message, tiny_model_dir,
                                                                         question_file, tmp_path, capsys,
                                                                         no_weights):
    line = refused(capsys, tmp_path, *bake_args(tiny_model_dir, question_file, tmp_path / "bake", flag, value))
    assert message in line


@pytest.mark.parametrize("command", ["pursue", "sequence"])
def test_every_baking_command_refuses_an_infinite_learning_rate(command, tiny_model_dir, question_file, tmp_path,
                                                                capsys, no_weights):
    line = refused(capsys, tmp_path, command, "--prompt", PIRATE, "--model", tiny_model_dir, "--questions",
                   question_file, *TINY_BAKE, "--learning-rate", "inf", "--output", tmp_path / "out")
    assert "--learning-rate must be a finite number" in line


def test_one_rule_for_finite_numbers_in_range():
    from lm_eval_baking.utils.settings import in_range

    assert in_range(0.5, above=0, high=1) and in_range(1, above=0, high=1) and in_range(0, low=0)
    for bad in (float("inf"), float("-inf"), float("nan"), True, "0.5", None, 0, 2):
        assert not in_range(bad, above=0, high=1), bad


@pytest.mark.parametrize("settings, message", [
    ({"limit": float("inf")}, "--limit must be a finite number above 0 (got inf)"),
    ({"threshold_pct": float("inf")}, "--threshold must be a finite number above 0 (got inf)"),
])
def test_forgetting_settings_refuse_infinite_numbers(settings, message):
    from lm_eval_baking.errors import BakingError
    from lm_eval_baking.evals.config import ForgettingSettings

    with pytest.raises(BakingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ForgettingSettings(**settings)


@pytest.mark.parametrize("settings", [{"temperature": float("nan")}, {"temperature": float("inf")}])
def test_conversation_settings_refuse_non_finite_temperatures(settings):
    from lm_eval_baking.errors import BakingError
    from lm_eval_baking.evals.config import ConversationSettings

    with pytest.raises(BakingError, match="--temperature must be a finite number"):
        ConversationSettings(**settings)


# ---------------------------------------------------------------------------- --questions must be a regular file

@pytest.mark.parametrize("kind, message", [
    ("folder", "is a folder, not a file; pass a file inside it"),
    ("missing", "not found; pass a .txt (one per line)"),
    ("fifo", "is not a regular file (a pipe, socket or device); save the questions to a file and pass that"),
])
def test_questions_that_are_not_a_regular_file_each_get_their_own_line(kind, message, tiny_model_dir, tmp_path,
                                                                       capsys, no_weights):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    questions = inputs / "questions.txt"
    if kind == "folder":
        questions.mkdir()
    elif kind == "fifo":
        os.mkfifo(questions)  # opening it would block the test: the check must come first
    line = refused(capsys, tmp_path, *bake_args(tiny_model_dir, questions, tmp_path / "bake"))
    assert f"question file {questions} {message}" in line


# ---------------------------------------------------------------------------- --output ""

@pytest.mark.parametrize("command", [
    ["bake", "--prompt", PIRATE], ["pursue", "--prompt", PIRATE], ["sequence", "--prompt", PIRATE],
    ["strength", "some-bake", "--strength", "0.5"], ["report", "results"], ["forgetting", "some-adapter"],
])
@pytest.mark.parametrize("empty", ["", " "])
def test_an_empty_output_is_refused_not_read_as_the_current_folder(command, empty, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # '' would have become '.': this folder
    line = refused(capsys, tmp_path, *command, "--output", empty)
    assert line == f"lm-eval-baking: error: --output {empty!r} is empty; pass the folder to write, e.g. --output " \
                   "adapters/pirate"
