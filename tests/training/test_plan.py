"""The bake plan: sizes from the minimums, LoRA targets from the model, and the default bake left as it was."""

from __future__ import annotations

import pytest
import torch

from lm_eval_baking import BakeConfig, BakingError, bake, load_bake_record
from lm_eval_baking.training.plan import plan_bake

from conftest import PIRATE, tiny_config

# The default bake's config before the budget and target keywords existed (commit 1b5c253): a default bake
# on the default model must still resolve to exactly this.
DEFAULT_BAKE_BEFORE = {
    "prompt": PIRATE, "model": "default", "questions": "builtin", "heldout_fraction": 0.2,
    "samples_per_question": 1, "heldout_samples_per_question": 1, "max_new_tokens": 48, "temperature": 1.0,
    "lora_rank": 16, "lora_alpha": 32.0, "lora_dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "learning_rate": 0.002, "epochs": 1, "batch_size": 8, "top_k": None, "cache_teacher": False,
    "length_bucketing": False, "kl_chunk_size": None, "precision": "bf16", "device": "auto",
    "generation_batch_size": 64, "seed": 0,
}


def test_default_bake_resolves_to_the_settings_it_always_had(default_model_dir):
    plan = plan_bake(BakeConfig(prompt=PIRATE))
    resolved = plan.config.to_dict()
    assert {k: resolved[k] for k in DEFAULT_BAKE_BEFORE} == DEFAULT_BAKE_BEFORE
    # The settings added since change nothing here: fp32 base, no extra measurements (so the one measured
    # adapter, the last, is the one kept).
    assert (resolved["dtype"], resolved["load_in_4bit"], resolved["eval_every"]) == ("fp32", False, None)
    assert plan.budget == {"train_questions": 256, "heldout_questions": 64, "samples_per_question": 1,
                           "heldout_samples_per_question": 1, "trajectories": 256, "heldout_answers": 64,
                           "epochs": 1, "steps_per_epoch": 32, "steps": 32}
    assert plan.targets.counts() == {name: 30 for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
    # A baking.json written before these settings existed reads back as this very config: it is reused.
    assert BakeConfig.from_dict(DEFAULT_BAKE_BEFORE).to_dict() == resolved


def test_default_targets_give_the_same_seeded_adapter_as_the_old_explicit_list(default_model_dir):
    from peft import LoraConfig, get_peft_model

    from lm_eval_baking.core.models import load_model
    from lm_eval_baking.training.baker import attach_lora

    ours = attach_lora(load_model(default_model_dir)[0], BakeConfig(prompt=PIRATE))  # target_modules: attention
    torch.manual_seed(0)
    before = get_peft_model(load_model(default_model_dir)[0], LoraConfig(
        r=16, lora_alpha=32.0, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM"))
    mine = {n: p for n, p in ours.named_parameters() if p.requires_grad}
    theirs = {n: p for n, p in before.named_parameters() if p.requires_grad}
    assert mine.keys() == theirs.keys() and len(mine) == 2 * 4 * 30
    assert all(torch.equal(mine[n], theirs[n]) for n in mine)


def test_a_small_question_file_gets_more_answers_per_question(tiny_model_dir, question_file):
    plan = plan_bake(BakeConfig(prompt=PIRATE, model=str(tiny_model_dir), questions=str(question_file)))
    assert plan.budget == {"train_questions": 10, "heldout_questions": 2, "samples_per_question": 26,
                           "heldout_samples_per_question": 32, "trajectories": 260, "heldout_answers": 64,
                           "epochs": 1, "steps_per_epoch": 33, "steps": 33}
    assert (plan.config.samples_per_question, plan.config.heldout_samples_per_question, plan.config.epochs) == \
        (26, 32, 1)


def test_given_sizes_win_and_epochs_fill_the_minimum_steps(tiny_model_dir, question_file):
    plan = plan_bake(BakeConfig(prompt=PIRATE, model=str(tiny_model_dir), questions=str(question_file),
                                samples_per_question=3))
    assert plan.budget["trajectories"] == 30 and plan.budget["steps_per_epoch"] == 4 and plan.config.epochs == 8
    plan = plan_bake(BakeConfig(prompt=PIRATE, model=str(tiny_model_dir), questions=str(question_file),
                                samples_per_question=3, epochs=2))
    assert plan.config.epochs == 2 and plan.budget["steps"] == 8


def test_all_linear_and_names_resolve_and_a_wrong_name_lists_real_layers(tiny_model_dir, question_file):
    def targets(*names):
        return plan_bake(tiny_config(tiny_model_dir, question_file, target_modules=list(names))).config.target_modules

    assert targets("all-linear") == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert targets("attention", "down_proj") == ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]
    assert targets("v_proj") == ["v_proj"]
    with pytest.raises(BakingError) as error:
        targets("c_attn")
    message = str(error.value)
    assert "\n" not in message and "c_attn" in message
    assert "q_proj (2), k_proj (2), v_proj (2), o_proj (2), gate_proj (2), up_proj (2), down_proj (2), " \
           "lm_head (1)" in message
    assert "attention / all-linear" in message


def test_an_explicit_request_equal_to_the_resolved_one_reuses_the_bake(tiny_model_dir, question_file, tmp_path):
    first = bake(tiny_config(tiny_model_dir, question_file, epochs=1), tmp_path / "b", progress=False)
    record = load_bake_record(first.output)
    assert record["config"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert record["training"]["requested"] == {"target_modules": ["attention"]}
    again = bake(tiny_config(tiny_model_dir, question_file, epochs=1,
                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]), tmp_path / "b", progress=False)
    assert again.reused


@pytest.mark.parametrize("overrides, message", [
    ({"min_heldout_answers": 1}, "--min-heldout-answers must be at least 2"),
    ({"min_steps": 0}, "--min-steps"),
    ({"samples_per_question": 0}, "--samples-per-question"),
    ({"eval_every": 0}, "--eval-every"),
    ({"dtype": "int8"}, "--dtype must be one of fp32, bf16, fp16"),
    ({"target_modules": [" "]}, "--target-modules takes module names"),
])
def test_bad_sizes_are_one_line_errors(tiny_model_dir, question_file, overrides, message):
    with pytest.raises(BakingError, match=message):
        tiny_config(tiny_model_dir, question_file, **overrides)
