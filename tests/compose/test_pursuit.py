"""Prompt pursuit, chain export, half-baking and multi-prompt sequences on the tiny model."""

import argparse
import json
import math
import shutil
from dataclasses import replace

import pytest
import torch

from lm_eval_baking import BakingError, load_bake_record
from lm_eval_baking.utils.jsonl import read_jsonl
from lm_eval_baking.core.kl import token_level_kl
from lm_eval_baking.core.models import load_model
from lm_eval_baking.artifacts.lora import export_chain, export_strength, load_chain
from lm_eval_baking.cli import composing
from lm_eval_baking.compose.evaluators import LmEvalEvaluator, QualityEvaluator, resolve_evaluator
from lm_eval_baking.compose.pursuit import pursue
from lm_eval_baking.compose.config import ComposeSettings
from lm_eval_baking.compose.sequence import bake_sequence
from lm_eval_baking.core.sampling import Trajectory

import conftest
from conftest import PIRATE

FRENCH = "Always respond in French."
IDS = torch.tensor([[1, 17, 230, 4, 5000, 77, 9, 2]])


def tiny_config(tiny_model_dir, question_file, **overrides):
    settings = dict(samples_per_question=1, epochs=1, lora_rank=2, lora_alpha=4)
    return conftest.tiny_config(tiny_model_dir, question_file, **{**settings, **overrides})


def scripted(scores: dict[int, float]):
    """An evaluator returning a fixed score per round (round 0 = the base)."""
    def evaluator(model, tokenizer, round_index):
        return scores[round_index]
    return evaluator


@pytest.fixture(scope="module")
def pursuit_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("pursuit") / "pirate"


@pytest.fixture(scope="module")
def two_rounds(tiny_model_dir, question_file, pursuit_dir):
    """Two rounds that every pursuit test below reuses (same settings, same folder)."""
    return pursue(tiny_config(tiny_model_dir, question_file), pursuit_dir, max_rounds=2,
                  evaluator=scripted({0: 0.0, 1: 1.0, 2: 2.0}), progress=False)


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


def adapter_logits(base_dir, adapter):
    from peft import PeftModel

    model, _ = load_model(base_dir)
    return logits(PeftModel.from_pretrained(model, str(adapter)).eval())


# ---------------------------------------------------------------------------- one adapter out


def test_exported_chain_equals_the_merged_rounds(two_rounds, tiny_model_dir, pursuit_dir, tmp_path):
    rounds = [pursuit_dir / "round-1", pursuit_dir / "round-2"]
    chain, _ = load_chain(str(tiny_model_dir), rounds)
    exported = export_chain(str(tiny_model_dir), rounds, tmp_path / "chain")
    config = json.loads((exported / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (4, 4, False)
    assert config["base_model_name_or_path"] == str(tiny_model_dir)
    difference = (adapter_logits(tiny_model_dir, exported) - logits(chain)).abs().max().item()
    assert difference <= 1e-4
    # ... and the chain really is two rounds: round 2 moved the model beyond round 1.
    round_1, _ = load_chain(str(tiny_model_dir), rounds[:1])
    assert (logits(round_1) - logits(chain)).abs().max() > 1e-4
    record = load_bake_record(exported)  # a bake-style record: baking_mckl can score the export
    assert [r["rank"] for r in record["pursuit_export"]["rounds"]] == [2, 2]
    assert (exported / "data" / "heldout.jsonl").read_bytes() == (rounds[0] / "data" / "heldout.jsonl").read_bytes()


def test_chain_export_handles_other_ranks_scales_and_module_sets(two_rounds, tiny_model_dir, pursuit_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    # An adapter unlike the rounds: rank 1, rsLoRA scale 3/√1, on q_proj and v_proj only.
    other = tmp_path / "other"
    shutil.copytree(pursuit_dir / "round-1", other)
    config = json.loads((other / "adapter_config.json").read_text())
    config.update(r=1, lora_alpha=3, use_rslora=True, target_modules=["q_proj", "v_proj"])
    (other / "adapter_config.json").write_text(json.dumps(config))
    weights = load_file(str(other / "adapter_model.safetensors"))
    kept = {k: (v[:1] if ".lora_A." in k else v[:, :1]).contiguous() for k, v in weights.items()
            if "q_proj" in k or "v_proj" in k}
    save_file(kept, str(other / "adapter_model.safetensors"))

    chain = [pursuit_dir / "round-1", other]
    merged, _ = load_chain(str(tiny_model_dir), chain)
    exported = export_chain(str(tiny_model_dir), chain, tmp_path / "chain")
    assert json.loads((exported / "adapter_config.json").read_text())["r"] == 3
    assert (adapter_logits(tiny_model_dir, exported) - logits(merged)).abs().max().item() <= 1e-4


def test_chain_of_different_base_models_is_refused(two_rounds, tiny_model_dir, pursuit_dir, tmp_path):
    foreign = tmp_path / "foreign"
    shutil.copytree(pursuit_dir / "round-2", foreign)
    record = json.loads((foreign / "baking.json").read_text())
    record["base_model"]["sha256"] = "0" * 64
    (foreign / "baking.json").write_text(json.dumps(record))
    with pytest.raises(BakingError, match="different base model.*re-bake"):
        export_chain(str(tiny_model_dir), [pursuit_dir / "round-1", foreign], tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- pursuit


def test_pursuit_record_and_max_rounds(two_rounds, pursuit_dir, tiny_model_dir, question_file):
    result = pursue(tiny_config(tiny_model_dir, question_file), pursuit_dir, max_rounds=2,
                    evaluator=scripted({0: 0.0, 1: 1.0, 2: 2.0}), progress=False)  # reuses the two rounds
    assert result.stop_reason == "max_rounds" and result.best_round == 2
    record = json.loads((pursuit_dir / "pursuit.json").read_text())
    assert record["status"] == "done" and record["stop_reason"] == "max_rounds" and record["best_round"] == 2
    assert record["config"] == tiny_config(tiny_model_dir, question_file).to_dict()
    assert record["settings"] == {"max_rounds": 2, "min_improvement": 0.01, "evaluator": "scripted.<locals>.evaluator"}
    assert [(r["round"], r["score"], r["improvement"]) for r in record["rounds"]] == [(0, 0.0, None), (1, 1.0, None),
                                                                                     (2, 2.0, 1.0)]
    assert record["rounds"][1]["bake"] == "round-1" and record["rounds"][2]["kl_ratio"] > 0
    pursued = json.loads((pursuit_dir / "pursued" / "adapter_config.json").read_text())
    assert pursued["r"] == 4  # rounds 1 and 2


def test_pursuit_stops_when_the_gain_is_below_the_threshold(two_rounds, pursuit_dir, tiny_model_dir, question_file):
    result = pursue(tiny_config(tiny_model_dir, question_file), pursuit_dir, max_rounds=5, min_improvement=0.01,
                    evaluator=scripted({0: 0.0, 1: 1.0, 2: 1.005}), progress=False)
    assert result.stop_reason == "converged" and result.best_round == 2
    assert result.rounds[2].improvement == pytest.approx(0.005)
    assert not (pursuit_dir / "round-3").exists()


def test_pursuit_stops_on_a_worse_round_and_keeps_the_best(two_rounds, pursuit_dir, tiny_model_dir, question_file):
    result = pursue(tiny_config(tiny_model_dir, question_file), pursuit_dir, max_rounds=5,
                    evaluator=scripted({0: 0.0, 1: 1.0, 2: 0.5}), progress=False)
    assert result.stop_reason == "worse" and result.best_round == 1
    assert json.loads((pursuit_dir / "pursuit.json").read_text())["best_round"] == 1
    assert json.loads((pursuit_dir / "pursued" / "adapter_config.json").read_text())["r"] == 2


def test_reprompted_score_uses_the_prompt_again(two_rounds, pursuit_dir, tiny_model_dir, question_file):
    seen = []

    def evaluator(model, tokenizer, round_index, *, system_prompt=None):
        seen.append((round_index, system_prompt))
        return 1.0 + round_index + (0.5 if system_prompt else 0.0)

    result = pursue(tiny_config(tiny_model_dir, question_file), pursuit_dir, max_rounds=2, evaluator=evaluator,
                    progress=False)
    assert [r.reprompted_score for r in result.rounds] == [1.5, 2.5, 3.5]
    assert (1, PIRATE) in seen and (1, None) in seen


@pytest.mark.parametrize("bad, message", [
    (lambda model, tokenizer, i: 1 / 0 if i == 2 else 1.0, "failed on round 2 .ZeroDivisionError"),
    (lambda model, tokenizer, i: float("nan") if i == 2 else 1.0, "returned nan on round 2"),
    (lambda model, tokenizer, i: "high" if i == 2 else 1.0, "returned 'high' on round 2"),
])
def test_failing_evaluator_is_one_clear_error_and_keeps_the_rounds(two_rounds, pursuit_dir, tiny_model_dir,
                                                                  question_file, bad, message):
    before = {p: p.read_bytes() for p in (pursuit_dir / "round-1").rglob("*") if p.is_file()}
    with pytest.raises(BakingError, match=message) as error:
        pursue(tiny_config(tiny_model_dir, question_file), pursuit_dir, max_rounds=3, evaluator=bad, progress=False)
    assert "kept in" in str(error.value) and "\n" not in str(error.value)
    assert {p: p.read_bytes() for p in (pursuit_dir / "round-1").rglob("*") if p.is_file()} == before
    assert (pursuit_dir / "round-2" / "baking.json").is_file()
    trail = json.loads((pursuit_dir / "pursuit.json").read_text())
    assert trail["status"] == "running" and [r["round"] for r in trail["rounds"]] == [0, 1]


def test_pursuit_refuses_an_output_with_other_settings(two_rounds, pursuit_dir, tiny_model_dir, question_file):
    with pytest.raises(BakingError, match="other settings.*--overwrite"):
        pursue(tiny_config(tiny_model_dir, question_file, prompt="You are a cat."), pursuit_dir, progress=False)


def test_evaluator_specs(two_rounds, pursuit_dir, tiny_model_dir, question_file):
    config = tiny_config(tiny_model_dir, question_file)
    reference = pursuit_dir / "round-1"
    assert resolve_evaluator(None, config, reference).name == "adherence:pirate"  # a built-in persona's prompt
    assert isinstance(resolve_evaluator(None, replace(config, prompt="You are a cat."), reference), QualityEvaluator)
    assert resolve_evaluator("adherence:french", config, reference).name == "adherence:french"
    assert resolve_evaluator("baking_mckl:quality", config, reference).bake == str(reference)
    with pytest.raises(BakingError, match="not understood.*TASK:METRIC"):
        resolve_evaluator("quality-ish", config, reference)
    with pytest.raises(BakingError, match="unknown persona"):
        resolve_evaluator("adherence:nobody", config, reference)


def test_bad_evaluator_spec_fails_before_baking(tiny_model_dir, question_file, tmp_path):
    with pytest.raises(BakingError, match="not understood"):
        pursue(tiny_config(tiny_model_dir, question_file), tmp_path / "p", evaluator="oops", progress=False)
    assert not (tmp_path / "p").exists()


def test_quality_evaluator_is_0_for_the_base_and_1_for_the_prompted_base(two_rounds, pursuit_dir, tiny_model_dir):
    quality = QualityEvaluator.from_bake(pursuit_dir / "round-1")
    model, tokenizer = load_model(tiny_model_dir)
    assert quality(model, tokenizer, 0) == pytest.approx(0.0, abs=1e-4)
    assert quality(model, tokenizer, 0, system_prompt=PIRATE) == pytest.approx(1.0, abs=1e-4)


def test_lm_eval_evaluator_scores_the_model_in_memory_like_ours(two_rounds, pursuit_dir, tiny_model_dir):
    round_1, tokenizer = load_chain(str(tiny_model_dir), [pursuit_dir / "round-1"])
    ours = QualityEvaluator.from_bake(pursuit_dir / "round-1").kl(round_1, tokenizer).per_token
    through_lm_eval = LmEvalEvaluator("baking_mckl", "kl_per_token", bake=str(pursuit_dir / "round-1"))
    assert -through_lm_eval(round_1, tokenizer, 1) == pytest.approx(ours, abs=1e-4)  # negated: lower KL is better


# ---------------------------------------------------------------------------- half-baking


def test_strength_dial_from_base_to_bake(two_rounds, pursuit_dir, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    bake_dir = pursuit_dir / "round-1"
    base, tokenizer = load_model(tiny_model_dir)
    heldout = [Trajectory.from_dict(r) for r in read_jsonl(bake_dir / "data" / "heldout.jsonl")]
    module = "base_model.model.model.layers.0.self_attn.q_proj"
    kls, norms = [], []
    for strength in (0, 0.25, 0.5, 0.75, 1):
        adapter = export_strength(bake_dir, strength, tmp_path / f"s{strength}")
        weights = load_file(str(adapter / "adapter_model.safetensors"))
        norms.append((weights[f"{module}.lora_B.weight"] @ weights[f"{module}.lora_A.weight"]).norm().item())
        model = PeftModel.from_pretrained(load_model(tiny_model_dir)[0], str(adapter)).eval()
        if strength == 0:
            assert (logits(model) - logits(base)).abs().max() <= 1e-6
        if strength == 1:
            assert (logits(model) - adapter_logits(tiny_model_dir, bake_dir)).abs().max() <= 1e-6
        kls.append(token_level_kl(model, tokenizer, heldout, PIRATE, progress=False).per_token)
    assert norms == pytest.approx([s * norms[-1] for s in (0, 0.25, 0.5, 0.75, 1)])  # the update scales linearly
    # Any strength moves the model towards the prompted base. (KL is not monotone up to s=1 here:
    # the tiny bake overshoots and s≈0.75 is closest, so only the first half is checked.)
    assert kls[0] > kls[1] > kls[2] and max(kls[1:]) < kls[0], kls
    assert load_bake_record(tmp_path / "s0.5")["half_baking"]["strength"] == 0.5


@pytest.mark.parametrize("strength", [-0.5, "abc", float("nan"), None])
def test_bad_strength_is_one_clear_error(two_rounds, pursuit_dir, tmp_path, strength):
    with pytest.raises(BakingError, match="--strength must be a number ≥ 0"):
        export_strength(pursuit_dir / "round-1", strength, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_strength_command_line(two_rounds, pursuit_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    composing.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["strength", str(pursuit_dir / "round-1"), "--strength", "2", "--epoch", "1",
                              "--output", str(tmp_path / "strong")])
    args.run(args)
    assert "strength 2" in capsys.readouterr().out
    assert load_bake_record(tmp_path / "strong")["half_baking"]["epoch"] == 1
    args = parser.parse_args(["strength", str(pursuit_dir / "round-1"), "--strength", "abc", "--output",
                              str(tmp_path / "bad")])
    with pytest.raises(BakingError, match="'abc'"):
        args.run(args)


# ---------------------------------------------------------------------------- sequences


def test_sequence_of_two_prompts(tiny_model_dir, question_file, tmp_path):
    result = bake_sequence([PIRATE, FRENCH], tiny_config(tiny_model_dir, question_file), tmp_path / "seq",
                           compose=ComposeSettings(mode="sequential"), progress=False)
    record = json.loads((tmp_path / "seq" / "sequence.json").read_text())
    assert [(s["stage"], s["prompt_index"], s["bake"]) for s in record["stages"]] == [(1, 1, "stage-1"),
                                                                                      (2, 2, "stage-2")]
    assert all(len(s["quality_after"]) == 2 and all(math.isfinite(q) for q in s["quality_after"])
               for s in record["stages"])
    assert record["quality_after_sequence"] == result.stages[-1].quality_after
    assert record["quality_after_own_stage"] == [result.stages[0].quality_after[0], result.stages[1].quality_after[1]]
    assert load_bake_record(tmp_path / "seq" / "stage-2")["config"]["prompt"] == FRENCH
    # Stage 1 bakes the original base, so its held-out data are the reference for prompt 1.
    reference = read_jsonl(tmp_path / "seq" / "references" / "prompt-1" / "data" / "heldout.jsonl")
    assert [r["answer_ids"] for r in reference] == [r["answer_ids"] for r in
                                                    read_jsonl(tmp_path / "seq" / "stage-1" / "data" / "heldout.jsonl")]
    combined = load_bake_record(result.combined)["pursuit_export"]
    assert [r["prompt"] for r in combined["rounds"]] == [PIRATE, FRENCH]


def test_empty_prompt_list_is_refused(tiny_model_dir, question_file, tmp_path):
    with pytest.raises(BakingError, match="prompt list is empty"):
        bake_sequence([], tiny_config(tiny_model_dir, question_file), tmp_path / "seq")
    with pytest.raises(BakingError, match="prompt 2: the prompt is empty"):
        bake_sequence([PIRATE, "  "], tiny_config(tiny_model_dir, question_file), tmp_path / "seq")
    assert not (tmp_path / "seq").exists()
