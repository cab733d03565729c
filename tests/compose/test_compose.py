"""Composition modes (joint, replay, merge, sequential): what each stage bakes towards, on the tiny model."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from conftest import FRENCH, PIRATE, tiny_config
from lm_eval_baking import bake
from lm_eval_baking.artifacts.lora import chain_id
from lm_eval_baking.compose.behaviour import PromptBehaviour
from lm_eval_baking.compose.config import ComposeSettings
from lm_eval_baking.compose.sequence import bake_sequence, format_sequence_table
from lm_eval_baking.core import models
from lm_eval_baking.core.sampling import Trajectory
from lm_eval_baking.errors import BakingError
from lm_eval_baking.training.baker import PromptBaker, attach_lora
from lm_eval_baking.utils.jsonl import read_jsonl


def _record(folder):
    return json.loads((folder / "baking.json").read_text())


def test_joined_prompts_keep_order_and_drop_repeats():
    settings = ComposeSettings(join_template="{earlier} | {prompt}")
    assert settings.joined(["a", "b", "a", "c"]) == "a | b | c"
    assert ComposeSettings().joined([PIRATE]) == PIRATE


@pytest.mark.parametrize("bad, match", [
    (dict(mode="both"), "compose mode both is not known; use one of joint, replay, merge, sequential"),
    (dict(joint_teacher="teacher"), "joint_teacher"),
    (dict(join_template="{prompt}"), "must hold"),
    (dict(join_template="{earlier} {prompt} {x}"), "may hold only"),
    (dict(replay_weight=1.0), "replay weight .* must be a share between 0 and 1"),
    (dict(replay_weight=True), "replay_weight"),
])
def test_bad_compose_settings_are_one_line_errors(bad, match):
    with pytest.raises(BakingError, match=match):
        ComposeSettings(**bad)


def test_a_separate_target_with_the_start_weights_bakes_the_same_adapter(tiny_model_dir, question_file, tmp_path):
    """The target-model path (teacher logits from another model) changes nothing when that model has the
    student's start weights: the same answers, the same losses, the same adapter."""
    config = tiny_config(tiny_model_dir, question_file, epochs=1)
    plain = bake(config, tmp_path / "plain", progress=False)
    target, _ = models.load_model(str(tiny_model_dir), device="cpu")
    separate = bake(config, tmp_path / "separate", progress=False, target_model=target, teacher_id="same weights")
    a = load_file(plain.output / "adapter_model.safetensors")
    b = load_file(separate.output / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert separate.final_kl.per_token == pytest.approx(plain.final_kl.per_token, rel=1e-5)
    assert _record(separate.output)["teacher"] == "same weights"


def test_a_replayed_answer_is_read_by_its_own_prompt(tiny_model_dir, question_file):
    model, tokenizer = models.load_model(str(tiny_model_dir), device="cpu")
    config = tiny_config(tiny_model_dir, question_file, prompt=FRENCH)
    baker = PromptBaker(attach_lora(model, config), tokenizer, config, progress=False)
    asked = Trajectory(question="Why?", answer="", answer_ids=[])
    own, student = baker.prefix(asked, True), baker.prefix(asked, False)
    replayed = baker.prefix(replace(asked, teacher_prompt=PIRATE), True)
    assert own != replayed and student != replayed
    assert tokenizer.decode(replayed).count("pirate") == 1 and "French" not in tokenizer.decode(replayed)


@pytest.fixture(scope="module")
def composed(tiny_model_dir, question_file, tmp_path_factory):
    """Pirate then French, one cycle, in every mode (stage 1 is the same plain bake in all of them)."""
    config = tiny_config(tiny_model_dir, question_file, epochs=1)
    root = tmp_path_factory.mktemp("compose")
    modes = {"joint-base": ComposeSettings(), "joint-chain": ComposeSettings(joint_teacher="chain"),
             "replay": ComposeSettings(mode="replay", replay_weight=0.5),
             "merge": ComposeSettings(mode="merge"), "sequential": ComposeSettings(mode="sequential")}
    return root, {name: bake_sequence([PIRATE, FRENCH], config, root / name, compose=settings, progress=False)
                  for name, settings in modes.items()}


def test_each_mode_bakes_its_own_target(composed):
    root, results = composed
    joined = f"{PIRATE}\n{FRENCH}"
    stage2 = {name: _record(root / name / "stage-2") for name in results}
    assert stage2["joint-base"]["config"]["prompt"] == joined and stage2["joint-chain"]["config"]["prompt"] == joined
    assert stage2["replay"]["config"]["prompt"] == FRENCH and stage2["sequential"]["config"]["prompt"] == FRENCH
    assert stage2["joint-base"]["teacher"].endswith("-> base prompted jointly")
    assert "base" not in (stage2["joint-chain"]["teacher"] or "") and "base" not in (stage2["sequential"]["teacher"] or "")
    assert [s.target for s in results["joint-base"].stages] == ["start", "base"]
    assert [s.target for s in results["sequential"].stages] == ["start", "start"]
    # Stage 1 has nothing before it: the same plain bake in every mode.
    first = {name: _record(root / name / "stage-1")["kl"] for name in results}
    assert all(kl == first["sequential"] for kl in first.values())


def test_merge_bakes_each_prompt_from_the_base_and_sums_the_adapters(composed, tiny_model_dir, question_file,
                                                                      tmp_path):
    root, results = composed
    stage2 = _record(root / "merge" / "stage-2")
    # Stage 2 starts from the bare base (no teacher weights named), reading only its own prompt ...
    assert stage2["config"]["prompt"] == FRENCH and stage2.get("teacher") is None
    assert [s.target for s in results["merge"].stages] == ["start", "start"]
    # ... so it is the same bake as French baked alone, and different from the sequential stage 2.
    alone = bake(tiny_config(tiny_model_dir, question_file, epochs=1, prompt=FRENCH), tmp_path / "alone",
                 progress=False)
    assert stage2["kl"] == _record(alone.output)["kl"]
    assert stage2["kl"] != _record(root / "sequential" / "stage-2")["kl"]
    # The composed adapter is the sum of both: one standard PEFT adapter of rank r1 + r2.
    combined = json.loads((results["merge"].combined / "adapter_config.json").read_text())
    ranks = [json.loads((root / "merge" / f"stage-{k}" / "adapter_config.json").read_text())["r"] for k in (1, 2)]
    assert combined["r"] == sum(ranks)


def test_merge_cycles_bake_a_prompt_again_on_its_own_stages_only(tiny_model_dir, question_file, tmp_path):
    config = tiny_config(tiny_model_dir, question_file, epochs=1)
    bake_sequence([PIRATE, FRENCH], config, tmp_path / "m", cycles=2, compose=ComposeSettings(mode="merge"),
                  progress=False)
    teachers = [_record(tmp_path / "m" / f"stage-{k}").get("teacher") for k in (1, 2, 3, 4)]
    assert teachers[:2] == [None, None]
    assert teachers[2] == chain_id([tmp_path / "m" / "stage-1"]) and teachers[3] == chain_id([tmp_path / "m" / "stage-2"])


def test_replay_mixes_in_the_earlier_prompts_answers_with_its_prompt(composed):
    root, _ = composed
    own = read_jsonl(root / "sequential" / "stage-2" / "data" / "train.jsonl")
    mixed = read_jsonl(root / "replay" / "stage-2" / "data" / "train.jsonl")
    stage1 = {(r["question"], r["answer"]) for r in read_jsonl(root / "replay" / "stage-1" / "data" / "train.jsonl")}
    replayed = [r for r in mixed if r.get("teacher_prompt")]
    assert len(mixed) == len(own) and len(replayed) == round(0.5 * len(own))
    assert all(r["teacher_prompt"] == PIRATE and (r["question"], r["answer"]) in stage1 for r in replayed)


def test_the_sequence_record_measures_every_prompt_against_the_joint_target(composed):
    root, results = composed
    result = results["joint-base"]
    record = json.loads((root / "joint-base" / "sequence.json").read_text())
    assert record["joint_prompt"] == f"{PIRATE}\n{FRENCH}"
    assert (root / "joint-base" / "references" / "joint" / "data" / "heldout.jsonl").is_file()
    low, high = record["joint_quality"]["ci"]
    assert low <= record["joint_quality"]["quality"] <= high
    assert all(math.isfinite(s["joint_quality"]) for s in record["stages"])
    # Both prompts are built-in personas: scored question by question on every model.
    assert set(record["behaviour"]) == {"1:pirate", "1:pirate_speech", "2:french"}
    for k, summary in record["behaviour"].items():
        scores = record["behaviour_scores"][k]
        assert len(scores["unprompted"]) == len(scores["composed"]) == summary["questions"] > 0
        low, high = summary["vs_joint"]["ci"]
        assert low <= summary["vs_joint"]["difference"] <= high
    table = format_sequence_table(result)
    assert "compose: joint (teacher: base)" in table and "composed − joint" in table


def test_a_difference_whose_ci_holds_zero_is_shown_as_none():
    same = PromptBehaviour("p", "pirate", [0.0] * 8, [1.0] * 8, [1.0] * 8, after_own_stage=[1.0] * 8,
                           composed=[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    summary = same.summary()
    low, high = summary["vs_joint"]["ci"]
    assert low < 0 < high
    from lm_eval_baking.compose.behaviour import format_difference as _difference, format_share as _share
    assert _difference(summary["vs_joint"]).startswith("none")
    assert summary["kept"]["share"] == pytest.approx(7 / 8)
    assert _share(summary["kept"]).startswith("88%")
