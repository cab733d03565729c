"""`bake --task` on the tiny model: the prompt, the questions and the record come from the lm_eval task, in both forms;
baking_mckl scores a text-form bake without the chat template (and refuses it with one)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lm_eval_baking import BakeConfig
from lm_eval_baking.artifacts.bake_dir import BakeDir
from lm_eval_baking.cli import main
from lm_eval_baking.core.harness import tasks_path
from lm_eval_baking.evals.config import TaskPromptSettings
from lm_eval_baking.utils.jsonl import read_jsonl
from lm_eval_baking.workflows.task_bake import bake_task

from conftest import FEWSHOT_TASKS

LM_EVAL = str(Path(sys.executable).with_name("lm_eval"))
SUMS = "tiny_fewshot_sums"


def small_config(model_dir, **overrides):
    settings = dict(prompt="placeholder", model=str(model_dir), heldout_fraction=0.25, max_new_tokens=4, epochs=1,
                    batch_size=4, learning_rate=2e-2, lora_rank=4, lora_alpha=8, precision="fp32")
    return BakeConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def chat_bake(tiny_model_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("task-bakes") / "sums"
    return bake_task(SUMS, small_config(tiny_model_dir), output, TaskPromptSettings(include_path=FEWSHOT_TASKS),
                     progress=False)


@pytest.fixture(scope="module")
def text_bake(plain_model_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("task-bakes") / "sums-text"
    return bake_task(SUMS, small_config(plain_model_dir), output,
                     TaskPromptSettings(include_path=FEWSHOT_TASKS, num_fewshot=2), progress=False)


def test_task_bake_records_the_task_and_bakes_its_turns(chat_bake):
    record = BakeDir(chat_bake.output).record()
    assert record.prompt_form == "chat" and chat_bake.prompt_form == "chat"
    assert record.config["prompt_format"] == "chat"
    assert [m["role"] for m in record.config["prompt"]] == ["user", "assistant"] * 3
    task = record.task
    assert task["name"] == SUMS and task["version"] == 2.0 and task["num_fewshot"] == 3
    assert task["fewshot_split"] == "train" and task["fewshot_seed"] == 1234 and len(task["config_sha256"]) == 64
    questions = [row["question"] for row in read_jsonl(record.config["questions"])]
    assert len(questions) == task["questions"] == 19
    heldout = read_jsonl(chat_bake.output / "data" / "heldout.jsonl")
    assert {row["question"] for row in heldout} <= set(questions)
    assert "--apply_chat_template" in chat_bake.lm_eval_command()


def test_a_model_without_a_chat_template_bakes_a_text_prefix(text_bake):
    record = BakeDir(text_bake.output).record()
    assert record.prompt_form == "text" and record.task["form"] == "text" and record.task["num_fewshot"] == 2
    assert record.config["prompt"] == "Q: What is 0 plus 0?\nA: 0\n\nQ: What is 0 plus 1?\nA: 1\n\n"
    assert record.kl["unprompted_base"]["per_token"] > 0  # the prefix changes the tiny model's answers
    heldout = read_jsonl(text_bake.output / "data" / "heldout.jsonl")
    assert all(row["teacher_logprob"] != row["base_logprob"] for row in heldout)
    assert "--apply_chat_template" not in text_bake.lm_eval_command()


def run_mckl(tmp_path, model_dir, bake_dir, *extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    command = [LM_EVAL, "--model", "hf", "--model_args", f"pretrained={model_dir},peft={bake_dir}", "--device", "cpu",
               "--batch_size", "4", "--include_path", str(tasks_path()), "--tasks", "baking_mckl",
               "--output_path", str(tmp_path / "out"), *extra]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def test_baking_mckl_scores_a_text_bake_without_the_chat_template(text_bake, plain_model_dir, tmp_path):
    run = run_mckl(tmp_path, plain_model_dir, text_bake.output)
    assert run.returncode == 0, run.stderr[-3000:]
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]["baking_mckl"]
    assert results["kl_per_token,none"] == pytest.approx(
        text_bake.final_kl.per_token, abs=3 * results["kl_per_token_stderr,none"] + 1e-3)


def test_baking_mckl_refuses_a_chat_context_for_a_text_bake(text_bake, tiny_model_dir, tmp_path):
    run = run_mckl(tmp_path, tiny_model_dir, text_bake.output, "--apply_chat_template")
    assert run.returncode == 2
    assert "run lm_eval without --apply_chat_template" in run.stderr


def test_cli_bake_task(tiny_model_dir, tmp_path, capsys):
    code = main(["bake", "--task", SUMS, "--include-path", FEWSHOT_TASKS, "--model", str(tiny_model_dir),
                 "--output", str(tmp_path / "cli"), "--max-new-tokens", "3", "--epochs", "1", "--lora-rank", "2",
                 "--lora-alpha", "4", "--precision", "fp32", "--max-task-questions", "12", "--quiet"])
    out = capsys.readouterr().out
    assert code in (0, 1) and "Baked adapter" in out
    assert BakeDir(tmp_path / "cli").record().task["questions"] == 12


def test_task_options_without_a_task_are_refused(tmp_path, capsys):
    assert main(["bake", "--prompt", "Be brief.", "--num-fewshot", "3", "--output", str(tmp_path / "x")]) == 2
    assert "pass --task NAME too" in capsys.readouterr().err
