"""baking_mckl through the real `lm_eval` CLI on the tiny model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lm_eval_baking import BakeConfig, bake
from lm_eval_baking.core.kl import token_level_kl
from lm_eval_baking.core.harness import tasks_path

from conftest import PIRATE

LM_EVAL = str(Path(sys.executable).with_name("lm_eval"))


@pytest.fixture(scope="module")
def small_bake(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("mckl")
    questions = root / "questions.txt"
    questions.write_text("\n".join(f"Question {i}: what do you know about {w}?" for i, w in
                                   enumerate(["tea", "ice", "oak", "sun", "fog", "ink", "owl", "elm"])))
    config = BakeConfig(prompt=PIRATE, model=str(tiny_model_dir), questions=str(questions), heldout_fraction=0.5,
                        heldout_samples_per_question=3, max_new_tokens=6, epochs=1, batch_size=4,
                        learning_rate=2e-2, lora_rank=4, lora_alpha=8, precision="fp32")
    return bake(config, root / "bake", progress=False)


def run_lm_eval(tmp_path, model_args, *extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = tmp_path / "results"
    command = [LM_EVAL, "--model", "hf", "--model_args", model_args, "--device", "cpu", "--batch_size", "4",
               "--apply_chat_template", "--include_path", str(tasks_path()), "--tasks", "baking_mckl",
               "--output_path", str(out), *extra]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (results_file,) = out.rglob("results_*.json")
    return json.loads(results_file.read_text())["results"]["baking_mckl"]


def test_bake_scores_through_lm_eval_peft(small_bake, tiny_model_dir, tmp_path):
    results = run_lm_eval(tmp_path, f"pretrained={tiny_model_dir},peft={small_bake.output}")
    assert results["kl_per_token,none"] == pytest.approx(
        small_bake.final_kl.per_token, abs=3 * results["kl_per_token_stderr,none"] + 1e-3)
    assert results["kl_per_token_stderr,none"] > 0  # built-in mean aggregation: lm_eval reports a stderr


def test_prompted_base_scores_zero_and_unprompted_base_scores_the_reference(small_bake, tiny_model_dir, tmp_path):
    bake_meta = json.dumps({"bake": str(small_bake.output)})
    prompted = run_lm_eval(tmp_path / "p", f"pretrained={tiny_model_dir}", "--system_instruction", PIRATE,
                           "--metadata", bake_meta)
    assert abs(prompted["kl_per_sequence,none"]) < 1e-3
    assert prompted["quality,none"] == pytest.approx(1.0, abs=1e-3)
    unprompted = run_lm_eval(tmp_path / "u", f"pretrained={tiny_model_dir}", "--metadata", bake_meta)
    assert unprompted["quality,none"] == pytest.approx(0.0, abs=1e-3)
    # Monte-Carlo and exact token-level KL estimate the same quantity.
    from lm_eval_baking.core.models import load_model
    from lm_eval_baking.core.sampling import Trajectory
    from lm_eval_baking.utils.jsonl import read_jsonl

    model, tokenizer = load_model(tiny_model_dir)
    heldout = [Trajectory.from_dict(r) for r in read_jsonl(small_bake.output / "data" / "heldout.jsonl")]
    exact = token_level_kl(model, tokenizer, heldout, PIRATE, progress=False)
    tolerance = 3 * (unprompted["kl_per_token_stderr,none"] + exact.per_token_stderr)
    assert unprompted["kl_per_token,none"] == pytest.approx(exact.per_token, abs=tolerance)


def test_adapter_without_bake_data_is_a_clear_error(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "plain-adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                   LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    run = subprocess.run([LM_EVAL, "--model", "hf", "--model_args", f"pretrained={tiny_model_dir},peft={adapter}",
                          "--device", "cpu", "--apply_chat_template", "--include_path", str(tasks_path()),
                          "--tasks", "baking_mckl"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode != 0
    assert "has no baking.json" in run.stderr


def _lm_eval_fails(tmp_path, model_args, *extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    run = subprocess.run([LM_EVAL, "--model", "hf", "--model_args", model_args, "--device", "cpu",
                          "--include_path", str(tasks_path()), "--tasks", "baking_mckl", *extra],
                         capture_output=True, text=True, env=env, timeout=600)
    ours = [line for line in run.stderr.splitlines() if line.startswith("lm-eval-baking: error: ")]
    return run, ours


def test_a_context_built_without_the_chat_template_is_refused_in_one_line(small_bake, tiny_model_dir, tmp_path):
    """Scored outside the chat template, the answers' log-probs mean nothing: quality -0.8 for a good bake."""
    run, ours = _lm_eval_fails(tmp_path, f"pretrained={tiny_model_dir},peft={small_bake.output}")
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert len(ours) == 1 and "--apply_chat_template" in ours[0]
    assert not list(tmp_path.rglob("results_*.json"))


def test_a_pickle_only_adapter_given_to_lm_eval_is_refused_in_one_line(small_bake, tiny_model_dir, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    adapter = tmp_path / "pickled"
    shutil.copytree(small_bake.output, adapter)
    weights = adapter / "adapter_model.safetensors"
    torch.save(load_file(str(weights)), adapter / "adapter_model.bin")
    weights.unlink()
    # PEFT loads plain tensors with torch's weights_only unpickler before any task code runs; our task then
    # refuses the pickle like every other adapter load does (a pickle that carries code torch refuses itself).
    run, ours = _lm_eval_fails(tmp_path, f"pretrained={tiny_model_dir},peft={adapter}", "--apply_chat_template")
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert len(ours) == 1 and "only pickle weights (adapter_model.bin)" in ours[0] and "--allow-pickle" in ours[0]
