"""One test per reliability finding, through the CLI as a user meets it: data loss from --overwrite, numbers that
cannot be right, checks that came too late or not at all. Files already on disk are compared before and after."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


from conftest import PIRATE, TINY_BAKE, one_line, run

def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def users_folder(tmp_path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "thesis.txt").write_text("three years of work")
    (folder / "notes").mkdir()
    (folder / "notes" / "ideas.md").write_text("# ideas")
    return folder


# ---------------------------------------------------------------------------- --overwrite deletes only what we made

@pytest.mark.parametrize("command", [
    ["bake", "--prompt", PIRATE, "--model", "{tiny}", "--questions", "{questions}", *TINY_BAKE],
    ["pursue", "--prompt", PIRATE, "--model", "{tiny}", "--questions", "{questions}", *TINY_BAKE],
    ["sequence", "--prompt", PIRATE, "--model", "{tiny}", "--questions", "{questions}", *TINY_BAKE],
])
def test_overwrite_never_deletes_a_folder_we_did_not_make(command, users_folder, tiny_model_dir, question_file,
                                                          capsys):
    before = snapshot(users_folder)
    argv = [a.format(tiny=tiny_model_dir, questions=question_file) for a in command]
    for extra in ([], ["--overwrite"]):
        code, _, err = run(capsys, *argv, "--output", users_folder, *extra)
        line = one_line(err)
        assert code == 2 and "did not make" in line and "thesis.txt" in line
        assert "--overwrite" not in line, "no message may suggest --overwrite for a folder that is not ours"
    assert snapshot(users_folder) == before


def test_strength_and_report_never_replace_a_users_folder(users_folder, small_bake, capsys, tmp_path):
    before = snapshot(users_folder)
    code, _, err = run(capsys, "strength", small_bake, "--strength", "0.5", "--output", users_folder, "--overwrite")
    assert code == 2 and "did not make" in one_line(err)
    code, _, err = run(capsys, "report", small_bake, "--output", users_folder)
    assert code == 2 and "did not make" in one_line(err)
    assert snapshot(users_folder) == before


def test_overwrite_replaces_our_own_bake(tiny_model_dir, question_file, tmp_path, capsys):
    output = tmp_path / "bake"
    argv = ["bake", "--prompt", PIRATE, "--model", tiny_model_dir, "--questions", question_file, *TINY_BAKE,
            "--output", output]
    assert run(capsys, *argv)[0] in (0, 1)
    code, _, err = run(capsys, *argv, "--seed", "1")
    assert code == 2 and "holds a different bake" in one_line(err) and "--overwrite" in err
    assert run(capsys, *argv, "--seed", "1", "--overwrite")[0] in (0, 1)
    assert json.loads((output / "baking.json").read_text())["config"]["seed"] == 1


# ---------------------------------------------------------------------------- numbers that cannot be right

def test_a_bake_that_made_the_model_worse_fails_loudly(tiny_model_dir, question_file, tmp_path, capsys):
    output = tmp_path / "worse"
    code, out, _ = run(capsys, "bake", "--prompt", PIRATE, "--model", tiny_model_dir, "--questions", question_file,
                       *TINY_BAKE, "--learning-rate", "0.5", "--output", output)
    assert code == 1
    assert "FAILED: the baked model is further from the prompted model" in out and "--learning-rate" in out
    record = json.loads((output / "baking.json").read_text())
    assert record["status"] == "failed" and record["kl"]["ratio_to_unprompted"] > 1
    assert record["warnings"] and "--learning-rate" in record["warnings"][0]


def test_a_single_held_out_answer_says_it_has_no_stderr(tiny_model_dir, tmp_path, capsys):
    questions = tmp_path / "two.txt"
    questions.write_text("Why is the sky blue?\nHow do I boil an egg?\n")
    code, out, _ = run(capsys, "bake", "--prompt", PIRATE, "--model", tiny_model_dir, "--questions", questions,
                       *TINY_BAKE, "--heldout-fraction", "0.5", "--output", tmp_path / "bake")
    assert code in (0, 1)
    assert "nan" not in out and "no stderr: one held-out answer" in out


def test_a_csv_question_file_is_read_by_its_column(tmp_path):
    from lm_eval_baking.core.questions import load_questions

    path = tmp_path / "questions.csv"
    path.write_text('id,question,answer\n1,"Why is the sky blue?",scattering\n2,"What is 2, plus 2?",4\n')
    assert [q.text for q in load_questions(path)] == ["Why is the sky blue?", "What is 2, plus 2?"]


# ---------------------------------------------------------------------------- checks before any work

def test_top_k_beyond_the_vocabulary_is_refused_before_the_model_loads(tiny_model_dir, question_file, tmp_path,
                                                                      capsys, monkeypatch):
    import lm_eval_baking.core.models as models

    def no_weights(*_, **__):
        raise AssertionError("the model's weights were loaded before the settings were checked")

    monkeypatch.setattr(models, "load_model", no_weights)
    code, _, err = run(capsys, "bake", "--prompt", PIRATE, "--model", tiny_model_dir, "--questions", question_file,
                       *TINY_BAKE, "--top-k", "10000000", "--output", tmp_path / "bake")
    assert code == 2 and "--top-k 10000000 is larger than the model's vocabulary" in one_line(err)
    assert not any(tmp_path.iterdir()), "nothing is left behind to --resume"


def test_an_unknown_evaluator_task_is_refused_before_round_one(tiny_model_dir, question_file, tmp_path, capsys):
    code, _, err = run(capsys, "pursue", "--prompt", PIRATE, "--model", tiny_model_dir, "--questions", question_file,
                       *TINY_BAKE, "--evaluator", "nonsense:metric", "--output", tmp_path / "pursuit")
    assert code == 2 and "unknown lm_eval task 'nonsense'" in one_line(err)
    assert not (tmp_path / "pursuit").exists()


def test_an_unknown_evaluator_metric_is_refused_before_round_one(tiny_model_dir, question_file, tmp_path, capsys):
    code, _, err = run(capsys, "pursue", "--prompt", PIRATE, "--model", tiny_model_dir, "--questions", question_file,
                       *TINY_BAKE, "--evaluator", "baking_mckl:nonsense", "--output", tmp_path / "pursuit")
    assert code == 2 and "reports no metric 'nonsense'; pick one of kl_per_token" in one_line(err)
    assert not (tmp_path / "pursuit").exists()


@pytest.mark.parametrize("threshold, message", [
    (["--max-kl", "-1"], "can never pass: kl is at least 0"),
    (["--min-quality", "1.5"], "can never pass: quality is at most 1"),
    (["--max-drift", "-2"], "can never pass: drift is at least -1"),
    (["--max-forgetting-drop-pct", "0"], "the allowed drop must be above 0"),
    (["--max-forgetting", "3"], "--max-forgetting was renamed --max-forgetting-drop-pct; pass"),
    (["--min", "adherence=1.01"], "can never pass: adherence is at most 1"),
])
def test_impossible_thresholds_are_bad_input(threshold, message, tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    (results / "results_x.json").write_text(json.dumps({
        "results": {"baking_mckl": {"quality,none": 0.9, "kl_per_token,none": 0.05}}, "lm_eval_version": "0.4.13",
        "config": {"model_args": "pretrained=base,peft=adapters/x"}}))
    code, _, err = run(capsys, "check", results, *threshold)
    assert code == 2 and message in one_line(err)


def test_a_killed_pursuit_round_needs_resume_like_a_bake(tiny_model_dir, question_file, tmp_path, capsys, monkeypatch):
    from lm_eval_baking.training.baker import PromptBaker

    argv = ["pursue", "--prompt", PIRATE, "--model", tiny_model_dir, "--questions", question_file, *TINY_BAKE,
            "--max-rounds", "2", "--min-improvement", "0", "--evaluator", "quality", "--output", tmp_path / "p"]
    train_epoch = PromptBaker.train_epoch
    rounds_started = []

    def killed_in_round_two(self, *args, **kwargs):
        rounds_started.append(1)
        if len(rounds_started) == 2:
            raise KeyboardInterrupt
        return train_epoch(self, *args, **kwargs)

    monkeypatch.setattr(PromptBaker, "train_epoch", killed_in_round_two)
    code, _, err = run(capsys, *argv)
    assert code == 130 and "--resume" in err and (tmp_path / "p" / ".round-2.partial").is_dir()
    monkeypatch.setattr(PromptBaker, "train_epoch", train_epoch)
    code, _, err = run(capsys, *argv)
    assert code == 2 and "an interrupted bake of" in one_line(err) and "pass --resume" in err
    code, out, _ = run(capsys, *argv, "--resume")
    assert code == 0 and "| 2 " in out and (tmp_path / "p" / "pursued").is_dir()


def test_strength_refuses_an_adapter_whose_config_names_another_base(small_bake, tmp_path, capsys, monkeypatch):
    import shutil

    other = tmp_path / "other-base"
    shutil.copytree(json.loads((small_bake / "baking.json").read_text())["base_model"]["name_or_path"], other)
    weights = other / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + bytes(8))  # same shapes, other weights
    adapter = tmp_path / "adapter"
    shutil.copytree(small_bake, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(other)}))
    code, _, err = run(capsys, "strength", adapter, "--strength", "0.5", "--output", tmp_path / "half")
    assert code == 2 and "was baked on a different base model" in one_line(err)
    assert not (tmp_path / "half").exists()
