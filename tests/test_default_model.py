"""End to end on the embedded default model (SmolLM2-135M-Instruct): the pirate bake.

This is the bake the README reports, with its default settings. It takes a
few minutes on a 2-core CPU, so it runs once per session and every check
reads from it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lm_eval_baking import BakeConfig, bake
from lm_eval_baking.core.harness import tasks_path

from conftest import PIRATE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pirate_bake(tmp_path_factory, default_model_dir):
    return bake(BakeConfig(prompt=PIRATE), tmp_path_factory.mktemp("default") / "pirate", progress=False)


def test_default_model_converts_to_a_plain_hf_directory(default_model_dir):
    names = {p.name for p in Path(default_model_dir).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert "quantization_config" not in json.loads((Path(default_model_dir) / "config.json").read_text())


def test_pirate_bake_removes_most_of_the_prompts_kl(pirate_bake):
    assert pirate_bake.reference_kl.per_token > 0.1
    assert pirate_bake.kl_ratio <= 0.20


def test_pirate_bake_opens_with_ahoy_like_the_prompted_model(pirate_bake, default_model_dir):
    from peft import PeftModel

    from lm_eval_baking.core.models import load_model
    from lm_eval_baking.core.questions import load_questions, split_questions
    from lm_eval_baking.core.sampling import sample_trajectories

    config = BakeConfig(prompt=PIRATE)
    _, heldout = split_questions(load_questions(), config.heldout_fraction, config.seed)
    model, tokenizer = load_model(default_model_dir)
    model = PeftModel.from_pretrained(model, pirate_bake.output)

    def ahoy_rate(system_prompt):
        answers = sample_trajectories(model, tokenizer, heldout, system_prompt=system_prompt, temperature=0,
                                      max_new_tokens=6, batch_size=64, progress=False)
        return sum(a.answer.lstrip().lower().startswith("ahoy") for a in answers) / len(answers)

    with model.disable_adapter():
        base, prompted = ahoy_rate(None), ahoy_rate(PIRATE)
    baked = ahoy_rate(None)
    assert base == 0
    assert prompted > 0.1
    assert baked >= prompted - 0.10


def test_pirate_adapter_runs_in_the_lm_eval_cli(pirate_bake, default_model_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    run = subprocess.run(
        [str(Path(sys.executable).with_name("lm_eval")), "--model", "hf",
         "--model_args", f"pretrained={default_model_dir},peft={pirate_bake.output}", "--device", "cpu",
         "--batch_size", "16", "--apply_chat_template", "--include_path", str(tasks_path()),
         "--tasks", "baking_mckl", "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]["baking_mckl"]
    assert results["quality,none"] > 0.5
    assert results["kl_per_token,none"] < pirate_bake.reference_kl.per_token
