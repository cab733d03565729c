"""Held-out KL tracked during training with the best adapter kept; the verdict's advice; base precision."""

from __future__ import annotations

import pytest
import torch

from lm_eval_baking import BakeConfig, BakingError, bake, load_bake_record
from lm_eval_baking.training.record import judge_kl_ratio

from conftest import PIRATE, tiny_config
from test_reliability import _Interrupt, adapter_tensors, assert_same_adapter

# lr 0.02, 4 epochs of 5 steps, measured every 2 steps: on the tiny model the lowest held-out KL is the
# end of epoch 3, not the last measurement, so keep_best has something to do.
TRACKED = dict(epochs=4, eval_every=2)


@pytest.fixture(scope="module")
def tracked(tiny_model_dir, question_file, tmp_path_factory):
    return bake(tiny_config(tiny_model_dir, question_file, **TRACKED), tmp_path_factory.mktemp("best") / "b",
                progress=False)


def test_held_out_kl_is_measured_during_training_and_the_best_adapter_is_written(tracked):
    record = load_bake_record(tracked.output)
    evaluations = record["kl"]["evaluations"]
    # Every 2 steps (global steps 2, 4, 6...) plus every epoch's end (step 5).
    assert [(e["epoch"], e["step"]) for e in evaluations][:5] == [(1, 2), (1, 4), (1, 5), (2, 1), (2, 3)]
    assert len(evaluations) == 12 and len(record["kl"]["per_epoch"]) == 4
    best = min(evaluations, key=lambda e: e["heldout_kl"]["per_token"])
    kept = record["kl"]["kept"]
    assert (kept["epoch"], kept["step"]) == (best["epoch"], best["step"]) == (3, 5)
    assert kept["rule"] == "lowest held-out KL measured"
    assert record["kl"]["final_per_token"] == best["heldout_kl"]["per_token"] == tracked.final_kl.per_token
    assert tracked.final_kl.per_token < record["kl"]["per_epoch"][-1]["heldout_kl"]["per_token"]
    assert_same_adapter(tracked.output, tracked.output / "checkpoints" / "epoch-3")


def test_no_keep_best_writes_the_last_adapter(tiny_model_dir, question_file, tmp_path, tracked):
    last = bake(tiny_config(tiny_model_dir, question_file, keep_best=False, **TRACKED), tmp_path / "last",
                progress=False)
    record = load_bake_record(last.output)
    assert (record["kl"]["kept"]["epoch"], record["kl"]["kept"]["step"]) == (4, 5)
    assert_same_adapter(last.output, last.output / "checkpoints" / "epoch-4")
    # Same training either way: only which adapter is written differs.
    assert_same_adapter(last.output / "checkpoints" / "epoch-4", tracked.output / "checkpoints" / "epoch-4")


def test_an_interrupted_tracked_bake_resumes_to_the_same_best(tiny_model_dir, question_file, tmp_path, monkeypatch,
                                                             tracked):
    from lm_eval_baking.training.config import ResumeSettings

    output = tmp_path / "b"
    with monkeypatch.context() as patch:
        _Interrupt(patch, at=9)  # the 8th measurement after the unprompted base's: mid epoch 3
        with pytest.raises(KeyboardInterrupt):
            bake(tiny_config(tiny_model_dir, question_file, **TRACKED), output, progress=False,
                 resume_settings=ResumeSettings(checkpoint_seconds=0))
    resumed = bake(tiny_config(tiny_model_dir, question_file, **TRACKED), output, resume=True, progress=False)
    assert resumed.resumed_from is not None
    assert load_bake_record(output)["kl"]["evaluations"] == load_bake_record(tracked.output)["kl"]["evaluations"]
    assert_same_adapter(output, tracked.output)


def test_a_high_kl_ratio_names_the_setting_that_sized_the_bake():
    auto = BakeConfig(prompt=PIRATE)
    resolved = auto.resolved(10, 2, ["q_proj"])
    status, [warning] = judge_kl_ratio(0.6, resolved, auto)
    assert status == "warning"
    assert "--min-trajectories (now 256, which gave 26 answers per question)" in warning
    assert "--min-steps (now 32, which gave 1 epochs)" in warning
    explicit = BakeConfig(prompt=PIRATE, samples_per_question=2, epochs=3)
    status, [warning] = judge_kl_ratio(0.6, explicit.resolved(10, 2), explicit, falling=True)
    assert "raise --epochs (now 3) first (the held-out KL was still falling), then --samples-per-question (now 2)" \
        in warning
    assert judge_kl_ratio(0.17, resolved, auto) == ("ok", [])
    assert judge_kl_ratio(1.2, resolved, auto)[0] == "failed"


@pytest.mark.parametrize("dtype, torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_a_half_precision_base_trains_fp32_lora_weights(tiny_model_dir, question_file, tmp_path, dtype, torch_dtype):
    from lm_eval_baking.core.models import load_model
    from lm_eval_baking.training.baker import attach_lora

    config = tiny_config(tiny_model_dir, question_file, dtype=dtype, epochs=1)
    model = attach_lora(load_model(tiny_model_dir, dtype=dtype)[0], config)
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trained = {p.dtype for p in model.parameters() if p.requires_grad}
    assert frozen == {torch_dtype} and trained == {torch.float32}

    result = bake(config, tmp_path / dtype, progress=False)
    assert load_bake_record(result.output)["config"]["dtype"] == dtype
    assert all(t.dtype == torch.float32 for t in adapter_tensors(result.output).values())
    assert torch.isfinite(torch.tensor(result.final_kl.per_token)) and result.final_kl.per_token >= 0


def test_4bit_on_cpu_is_refused_in_one_line_before_loading(tiny_model_dir, question_file, tmp_path):
    with pytest.raises(BakingError, match=r"^--load-in-4bit needs a CUDA GPU .*device is 'cpu'.*--dtype bf16"):
        bake(tiny_config(tiny_model_dir, question_file, load_in_4bit=True, device="cpu"), tmp_path / "q",
             progress=False)
    assert not list(tmp_path.iterdir())
