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
    ({"max_forgetting_drop_pct": float("inf")}, "--max-forgetting-drop-pct must be a finite number above 0 (got inf)"),
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
    ["strength", "some-bake", "--strength", "0.5"], ["report", "results"], ["forgetting", "--adapters", "some-adapter"],
])
@pytest.mark.parametrize("empty", ["", " "])
def test_an_empty_output_is_refused_not_read_as_the_current_folder(command, empty, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # '' would have become '.': this folder
    line = refused(capsys, tmp_path, *command, "--output", empty)
    assert line == f"lm-eval-baking: error: --output {empty!r} is empty; pass the folder to write, e.g. --output " \
                   "adapters/pirate"


# ---------------------------------------------------------------------------- lengths against the context

def questions_with(tmp_path: Path, line: str) -> Path:
    """A question file whose third line is `line` (the tiny model's context is 512 tokens)."""
    folder = tmp_path / "inputs"
    folder.mkdir(exist_ok=True)
    path = folder / "questions.txt"
    path.write_text(f"Why is the sky blue?\nHow do I boil an egg?\n{line}\nWhat makes rain?\n")
    return path


def test_a_question_longer_than_the_context_is_refused_naming_its_line(tiny_model_dir, tmp_path, capsys,
                                                                       no_weights):
    questions = questions_with(tmp_path, "word " * 600)
    line = refused(capsys, tmp_path, *bake_args(tiny_model_dir, questions, tmp_path / "bake"))
    assert f"the longest question, {questions}:3, takes" in line
    assert "exceeds the model's context of 512; shorten it to at most" in line and "or remove it" in line


def test_a_question_that_fits_only_without_the_answer_suggests_both_fixes(tiny_model_dir, tmp_path, capsys,
                                                                          no_weights):
    questions = questions_with(tmp_path, "word " * 400)
    line = refused(capsys, tmp_path, *bake_args(tiny_model_dir, questions, tmp_path / "bake", "--max-new-tokens",
                                                "200"))
    assert f"question, {questions}:3, takes" in line and "with --max-new-tokens 200 that exceeds the model's context of 512" in line
    assert "or pass --max-new-tokens at most" in line


def test_a_5mb_question_line_is_refused_up_front_and_leaves_nothing_behind(tiny_model_dir, tmp_path, capsys,
                                                                           no_weights):
    questions = questions_with(tmp_path, "word " * 1_000_000)
    line = refused(capsys, tmp_path, *bake_args(tiny_model_dir, questions, tmp_path / "bake"))
    assert f"question, {questions}:3, takes over" in line and "shorten it to at most" in line
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


@pytest.mark.parametrize("tokens", ["100000", "512", "500"])
def test_max_new_tokens_beyond_the_context_gets_its_own_message(tokens, tiny_model_dir, question_file, tmp_path,
                                                                capsys, no_weights):
    line = refused(capsys, tmp_path, *bake_args(tiny_model_dir, question_file, tmp_path / "bake",
                                                "--max-new-tokens", tokens))
    assert f"--max-new-tokens {tokens} leaves no room for the prompt and the longest question (" in line
    assert "in the model's context of 512; pass at most" in line and "shorten the prompt" not in line


def test_a_prompt_longer_than_the_context_says_shorten_the_prompt(tiny_model_dir, question_file, tmp_path, capsys,
                                                                  no_weights):
    line = refused(capsys, tmp_path, "bake", "--prompt", "Arr! " * 600, "--model", tiny_model_dir, "--questions",
                   question_file, *TINY_BAKE, "--output", tmp_path / "bake")
    assert "the prompt takes" in line and "exceeds the model's context of 512; shorten the prompt" in line


def test_questions_that_fit_are_measured_exactly(tiny_model_dir):
    """The check counts the context the sampler builds: with a 500-token answer cap a short question fails by
    exactly the prompt's and question's tokens."""
    from lm_eval_baking.core.chat import encode_like_lm_eval
    from lm_eval_baking.core.models import load_tokenizer
    from lm_eval_baking.core.prompts import BakePrompt
    from lm_eval_baking.core.questions import Question
    from lm_eval_baking.errors import BakingError
    from lm_eval_baking.training.config import BakeConfig
    from lm_eval_baking.training.plan import check_fits_context

    tokenizer = load_tokenizer(tiny_model_dir)
    questions = [Question("short?", where="q.txt:1"), Question("a much longer question " * 5, where="q.txt:2")]
    prompt = BakePrompt.from_setting(PIRATE, "auto", tokenizer)
    context = len(encode_like_lm_eval(tokenizer, prompt.context(tokenizer, questions[1].text)))
    config = BakeConfig(prompt=PIRATE, max_new_tokens=512 - context)
    check_fits_context(config, tokenizer, questions, 512)  # fits exactly
    with pytest.raises(BakingError, match=r"question, q\.txt:2, takes"):
        check_fits_context(BakeConfig(prompt=PIRATE, max_new_tokens=513 - context), tokenizer, questions, 512)


# ---------------------------------------------------------------------------- broken weights

@pytest.fixture(params=["truncated", "garbage", "empty"])
def broken_model(request, tiny_model_dir, tmp_path) -> Path:
    """The tiny model with its model.safetensors cut in half, overwritten with noise, or emptied."""
    import shutil

    path = tmp_path / "broken-base"
    shutil.copytree(tiny_model_dir, path)
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[:len(data) // 2], "garbage": bytes(range(256)) * 64,
                         "empty": b""}[request.param])
    return path


@pytest.mark.parametrize("command", ["bake", "pursue", "sequence"])
def test_damaged_base_weights_are_one_line_naming_the_file(command, broken_model, question_file, tmp_path, capsys):
    line = refused(capsys, tmp_path, command, "--prompt", PIRATE, "--model", broken_model, "--questions",
                   question_file, *TINY_BAKE, "--output", tmp_path / "out")
    assert f"the weights in {broken_model / 'model.safetensors'} are damaged or truncated" in line
    assert "re-download or re-save the model" in line


# ---------------------------------------------------------------------------- full disks and read-only outputs

@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs (root only), as tests/training/test_reliability.py mounts it. Skips where not allowed."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def read_only(mount: Path) -> None:
    import subprocess

    if subprocess.run(["mount", "-o", "remount,ro", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot remount the tmpfs read-only here")


def test_report_onto_a_full_disk_is_one_line_and_keeps_the_old_report(small_bake, small_disk, capsys):
    output = small_disk / "report"
    assert main(["report", str(small_bake), "--output", str(output)]) == 0
    capsys.readouterr()
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"\0" * free)
    line = refused(capsys, output, "report", small_bake, "--output", output)
    assert line.startswith(f"lm-eval-baking: error: cannot write the report to {output} (No space left on device); "
                           f"nothing at {output} was changed")
    filler.unlink()
    assert sorted(p.name for p in small_disk.iterdir()) == ["report"], "no staging folder is left behind"


def test_a_write_that_fails_anywhere_else_is_one_line(small_bake, tmp_path, capsys, monkeypatch):
    """The CLI's net: a full disk under a writer with no message of its own (here `strength`) is one line."""
    import lm_eval_baking.artifacts.lora as lora

    def full(*_, **__):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "half"))

    monkeypatch.setattr(lora, "export_strength", full)
    line = refused(capsys, tmp_path, "strength", small_bake, "--strength", "0.5", "--output", tmp_path / "half")
    assert "cannot write" in line and "No space left on device" in line and "free some disk space" in line


@pytest.mark.parametrize("command", [
    ["bake", "--prompt", PIRATE, "--model", "{tiny}", "--questions", "{questions}", *TINY_BAKE],
    ["pursue", "--prompt", PIRATE, "--model", "{tiny}", "--questions", "{questions}", *TINY_BAKE],
    ["sequence", "--prompt", PIRATE, "--model", "{tiny}", "--questions", "{questions}", *TINY_BAKE],
    ["report", "{bake}"],
])
@pytest.mark.parametrize("where", ["mount point", "below it"])
def test_a_read_only_output_is_refused_before_any_work(command, where, small_disk, tiny_model_dir, question_file,
                                                       small_bake, tmp_path, capsys, no_weights):
    read_only(small_disk)
    output = small_disk if where == "mount point" else small_disk / "new" / "out"
    argv = [a.format(tiny=tiny_model_dir, questions=question_file, bake=small_bake) for a in command]
    line = refused(capsys, tmp_path, *argv, "--output", output)
    assert f"cannot be written: {small_disk} is read-only" in line and "choose a writable --output" in line


def test_a_read_only_pipeline_output_is_refused_before_any_work(small_disk, tiny_model_dir, question_file, tmp_path,
                                                                capsys, no_weights):
    import json

    from conftest import tiny_recipe

    read_only(small_disk)
    recipe = tiny_recipe(tmp_path, tiny_model_dir, question_file)
    recipe["output"] = str(small_disk / "run")
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    line = refused(capsys, tmp_path, "pipeline", path)
    assert f"cannot be written: {small_disk} is read-only" in line


# ---------------------------------------------------------------------------- bake --task T --questions FILE

def test_a_task_without_spare_docs_bakes_with_the_users_questions(tiny_model_dir, question_file, tmp_path, capsys):
    import json

    from conftest import FEWSHOT_TASKS

    task = ["bake", "--task", "tiny_fewshot_sums", "--include-path", FEWSHOT_TASKS, "--num-fewshot", "18",
            "--model", tiny_model_dir, *TINY_BAKE]
    # 4 docs left: too few of its own (lm_eval prints a note about --metadata on stderr too, hence the last line)
    assert main([str(a) for a in task + ["--output", tmp_path / "own"]]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "own").exists()
    assert "has 4 questions outside its evaluated split" in line and "pass --questions FILE" in line
    assert main([str(a) for a in task + ["--questions", question_file, "--output", tmp_path / "bake"]]) in (0, 1)
    record = json.loads((tmp_path / "bake" / "baking.json").read_text())
    assert record["task"]["questions"] == f"--questions {question_file}" and record["task"]["num_fewshot"] == 18
    assert record["config"]["questions"] == str(question_file)


def test_forgetting_refuses_a_damaged_base_before_lm_eval(broken_model, small_bake, tmp_path, capsys):
    line = refused(capsys, tmp_path, "forgetting", "--adapters", small_bake, "--model", broken_model, "--output", tmp_path / "f")
    assert f"the weights in {broken_model / 'model.safetensors'} are damaged or truncated" in line
