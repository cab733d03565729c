"""Baking on the tiny model: the artefact, the loss going down, and bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch

from lm_eval_baking import BakingError, bake, load_bake_record
from lm_eval_baking.cli import main

from conftest import PIRATE, tiny_config


@pytest.fixture(scope="module")
def tiny_bake(tiny_model_dir, question_file, tmp_path_factory):
    output = tmp_path_factory.mktemp("bakes") / "pirate"
    return bake(tiny_config(tiny_model_dir, question_file), output, progress=False)


def test_bake_writes_a_standard_peft_adapter(tiny_bake, tiny_model_dir):
    out = tiny_bake.output
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tiny_model_dir)
    assert adapter_config["r"] == 4 and adapter_config["lora_alpha"] == 8
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "README.md").read_text().count(PIRATE) == 1
    for epoch in (1, 2):
        assert (out / "checkpoints" / f"epoch-{epoch}" / "adapter_model.safetensors").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "staging folder left behind"


def test_bake_record_is_complete(tiny_bake, tiny_model_dir):
    record = load_bake_record(tiny_bake.output)
    assert record["config"]["prompt"] == PIRATE
    assert len(record["prompt_sha256"]) == 64 and len(record["base_model"]["sha256"]) == 64
    assert record["questions"] == {"source": record["config"]["questions"], "sha256": record["questions"]["sha256"],
                                   "train": 9, "heldout": 3}
    assert [e["epoch"] for e in record["kl"]["per_epoch"]] == [1, 2]
    assert record["kl"]["unprompted_base"]["per_token"] > 0
    assert record["kl"]["ratio_to_unprompted"] == pytest.approx(
        record["kl"]["final_per_token"] / record["kl"]["unprompted_base"]["per_token"])
    assert set(record["versions"]) >= {"torch", "transformers", "peft"}
    heldout = [json.loads(line) for line in (tiny_bake.output / "data" / "heldout.jsonl").read_text().splitlines()]
    assert len(heldout) == 3 and all(row["temperature"] == 1.0 for row in heldout)
    assert all({"teacher_logprob", "base_logprob", "n_tokens", "answer_ids"} <= set(row) for row in heldout)


def test_baking_reduces_heldout_kl(tiny_bake):
    assert tiny_bake.final_kl.per_token < 0.7 * tiny_bake.reference_kl.per_token


def test_adapter_loads_with_peft_and_changes_the_model(tiny_bake, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    before = base(ids).logits
    baked = PeftModel.from_pretrained(base, tiny_bake.output)
    assert (baked(ids).logits - before).abs().max() > 1e-4


def test_same_settings_reuse_the_bake(tiny_bake, tiny_model_dir, question_file):
    stamp = (tiny_bake.output / "adapter_model.safetensors").stat().st_mtime_ns
    again = bake(tiny_config(tiny_model_dir, question_file), tiny_bake.output, progress=False)
    assert again.reused and again.final_kl == tiny_bake.final_kl
    assert (tiny_bake.output / "adapter_model.safetensors").stat().st_mtime_ns == stamp


def test_different_bake_at_output_is_refused_and_left_intact(tiny_bake, tiny_model_dir, question_file):
    before = {p: p.read_bytes() for p in tiny_bake.output.rglob("*") if p.is_file()}
    with pytest.raises(BakingError, match="holds a different bake.*--overwrite"):
        bake(tiny_config(tiny_model_dir, question_file, prompt="You are a cat."), tiny_bake.output, progress=False)
    assert {p: p.read_bytes() for p in tiny_bake.output.rglob("*") if p.is_file()} == before


def test_nan_loss_stops_with_advice_and_writes_nothing(tiny_model_dir, question_file, tmp_path, monkeypatch):
    from lm_eval_baking.training.baker import PromptBaker

    # A learning rate that would diverge (1e30) is refused before any work now; the loss is made nan directly.
    monkeypatch.setattr(PromptBaker, "_step", lambda self, batch: float("nan"))
    config = tiny_config(tiny_model_dir, question_file, epochs=1)
    with pytest.raises(BakingError, match="lower --learning-rate"):
        bake(config, tmp_path / "nan", progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("overrides, message", [
    ({"prompt": "   "}, "prompt is empty"),
    ({"prompt": "word " * 600}, "exceeds the model's context"),
    ({"model": "/no/such/model"}, "model folder /no/such/model does not exist"),
    ({"questions": "/no/such/file.txt"}, "not found"),
    ({"target_modules": ["no_such_proj"]}, r"matches no linear layer .* q_proj \(2\)"),
    ({"epochs": 0}, "--epochs"),
])
def test_bad_input_is_one_clear_error(tiny_model_dir, question_file, tmp_path, overrides, message):
    with pytest.raises(BakingError, match=message):
        bake(tiny_config(tiny_model_dir, question_file, **overrides), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_prints_one_error_line_and_exits_nonzero(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code = main(["bake", "--prompt", PIRATE, "--questions", str(empty), "--output", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and error[0].startswith("lm-eval-baking: error:")
    assert not (tmp_path / "out").exists()


def test_cli_bake_summary_names_the_lm_eval_command(tiny_model_dir, question_file, tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    run = subprocess.run(
        [sys.executable, "-m", "lm_eval_baking.cli", "bake", "--prompt", PIRATE, "--model", str(tiny_model_dir),
         "--questions", str(question_file), "--output", str(tmp_path / "cli"), "--max-new-tokens", "4",
         "--epochs", "1", "--precision", "fp32", "--lora-rank", "2", "--quiet"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "ratio baked/unprompted" in run.stdout
    assert f"peft={tmp_path / 'cli'}" in run.stdout and "lm_eval --model hf" in run.stdout
