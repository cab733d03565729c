"""Other architectures: tiny random models of seven decoder families bake with the default LoRA targets,
and the adapters load in lm_eval with `peft=` (in-process HFLM for all, the real CLI for two)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lm_eval_baking import bake, load_bake_record
from lm_eval_baking.core.harness import tasks_path

from conftest import tiny_architecture_config, tiny_config

LM_EVAL = str(Path(sys.executable).with_name("lm_eval"))

# What the default target ('attention') must resolve to: the linear layers of each attention block, named
# so that PEFT matches nothing else (GPT-2's MLP has a c_proj too, hence attn.c_proj).
EXPECTED_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gpt2": ["c_attn", "attn.c_proj"],
    "gpt_neox": ["query_key_value", "dense"],
    "phi3": ["o_proj", "qkv_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
}


@pytest.fixture(scope="module")
def architecture_dirs(tmp_path_factory, default_model_dir):
    """kind -> a saved random model of that architecture, with the default model's tokenizer and chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    assert tokenizer.chat_template
    dirs = {}
    for kind in EXPECTED_TARGETS:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(tiny_architecture_config(kind, tokenizer))
        assert model.config.model_type == kind
        path = tmp_path_factory.mktemp(f"tiny-{kind}")
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs[kind] = path
    return dirs


@pytest.fixture(scope="module")
def architecture_bakes(architecture_dirs, question_file, tmp_path_factory):
    """kind -> a bake with every default (target modules, LoRA rank and alpha, learning rate, precision)
    except tiny_config's sizes: 12 questions, 8-token answers, 2 samples, 2 epochs of batch 4."""
    root = tmp_path_factory.mktemp("arch-bakes")
    defaults = dict(learning_rate=2e-3, lora_rank=16, lora_alpha=32.0, precision="bf16")
    return {kind: bake(tiny_config(path, question_file, **defaults), root / kind, progress=False)
            for kind, path in architecture_dirs.items()}


@pytest.mark.parametrize("kind", list(EXPECTED_TARGETS))
def test_default_targets_follow_the_architecture(kind, architecture_bakes):
    result = architecture_bakes[kind]
    record = load_bake_record(result.output)
    assert tiny_config(Path("x"), Path("q.txt")).target_modules == ["attention"]  # the bake asked for the default
    targets = record["training"]["lora_targets"]
    assert targets["requested"] == ["attention"]
    assert targets["target_modules"] == EXPECTED_TARGETS[kind] == record["config"]["target_modules"]
    assert targets["modules"] == 2 * len(EXPECTED_TARGETS[kind])  # every attention linear of both layers
    adapter_config = json.loads((result.output / "adapter_config.json").read_text())
    assert sorted(adapter_config["target_modules"]) == sorted(EXPECTED_TARGETS[kind])
    assert adapter_config["fan_in_fan_out"] == (kind == "gpt2")  # GPT-2's Conv1D holds its weight transposed
    from safetensors.torch import load_file

    lora_a = [k for k in load_file(result.output / "adapter_model.safetensors") if "lora_A" in k]
    assert len(lora_a) == targets["modules"]
    assert all("attn" in k or "attention" in k for k in lora_a), lora_a
    assert result.final_kl.per_token < result.reference_kl.per_token  # the bake moved toward the teacher


@pytest.mark.parametrize("kind", list(EXPECTED_TARGETS))
def test_adapter_loads_in_lm_eval_hflm_with_peft(kind, architecture_dirs, architecture_bakes):
    """lm_eval's own HFLM loads base + peft= adapter and scores the bake's held-out answers (baking_mckl)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    result = architecture_bakes[kind]
    args = {"pretrained": str(architecture_dirs[kind]), "peft": str(result.output)}
    lm = HFLM(**args, device="cpu", batch_size=8)
    assert type(lm.model).__name__ == "PeftModelForCausalLM"
    out = lm_eval.simple_evaluate(model=lm, tasks=["baking_mckl"], apply_chat_template=True,
                                  task_manager=TaskManager(include_path=str(tasks_path()), metadata=args))
    scored = out["results"]["baking_mckl"]
    # lm_eval's Monte-Carlo KL of the baked model estimates the bake's own exact held-out KL.
    assert scored["kl_per_token,none"] == pytest.approx(
        result.final_kl.per_token, abs=3 * scored["kl_per_token_stderr,none"] + 1e-3)


@pytest.mark.parametrize("kind", ["gpt2", "gpt_neox"])
def test_adapter_loads_through_the_lm_eval_cli(kind, architecture_dirs, architecture_bakes, tmp_path):
    result = architecture_bakes[kind]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    command = [LM_EVAL, "--model", "hf", "--model_args",
               f"pretrained={architecture_dirs[kind]},peft={result.output}", "--device", "cpu", "--batch_size", "8",
               "--apply_chat_template", "--include_path", str(tasks_path()), "--tasks", "baking_mckl",
               "--output_path", str(tmp_path / "results")]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (results_file,) = (tmp_path / "results").rglob("results_*.json")
    scored = json.loads(results_file.read_text())["results"]["baking_mckl"]
    assert scored["kl_per_token,none"] == pytest.approx(
        result.final_kl.per_token, abs=3 * scored["kl_per_token_stderr,none"] + 1e-3)


@pytest.mark.parametrize("kind", sorted(EXPECTED_TARGETS))
def test_cached_batch_continues_exactly_as_generate_does(kind, default_model_dir):
    """The KV cache kept across calls (prefix shared, rows fed unequal chunks, padding in the middle, a rollback)
    samples the tokens one generate() call over the whole sequences samples, on every architecture (fp32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_baking.core.batching import pad
    from lm_eval_baking.core.kv_batch import CachedBatch

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_architecture_config(kind, tokenizer)).eval()
    rows = [tokenizer.encode("Hello there, how are you doing today? I am"), tokenizer.encode("The sea is"),
            tokenizer.encode("One two three four five six")]
    stop = {tokenizer.eos_token_id}
    batch = CachedBatch(model, tokenizer.pad_token_id, len(rows))
    batch.extend([rows[0][:3], rows[1], []])
    batch.extend([rows[0][3:], [], rows[2]])
    ids, mask = pad(rows, tokenizer.pad_token_id, left=True)
    for temperature in (0.0, 0.8):
        torch.manual_seed(1)
        cached = batch.generate(7, temperature, stop)
        batch.rollback()
        torch.manual_seed(1)
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature else \
            dict(do_sample=False)
        plain = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=7, pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=sorted(stop), **sampling)
        assert cached == [row[ids.shape[1]:].tolist() for row in plain], temperature
    assert batch.tokens == rows
    assert batch.sync([rows[0] + [5], rows[1], rows[2][:2]]) is False  # row 2 shrank: read again from scratch
    assert batch.tokens == [rows[0] + [5], rows[1], rows[2][:2]]
    assert batch.sync([rows[0] + [5, 6], rows[1] + [7], rows[2][:2]]) is True


@pytest.mark.parametrize("kind", sorted(EXPECTED_TARGETS))
def test_cached_batch_buffers_give_dynamic_caches_numbers_under_bf16_autocast(kind, default_model_dir, monkeypatch):
    """The growing buffers (core.kv_batch.GrowingLayer: written in place, stored in the autocast dtype) give the
    attention the numbers transformers' DynamicCache gives it: every step's logits bit for bit, in bf16 autocast,
    across a regrowth of the buffers, a rollback and a second generation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.cache_utils import DynamicLayer

    from lm_eval_baking.core import kv_batch

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_architecture_config(kind, tokenizer)).eval()
    rows = [tokenizer.encode("Hello there, how are you doing today? I am"), tokenizer.encode("The sea is"),
            tokenizer.encode("One two three four five six")]

    growing = kv_batch.growing

    def run(grow: bool) -> list[torch.Tensor]:
        monkeypatch.setattr(kv_batch, "growing", growing if grow else (lambda cache: cache))
        logits: list[torch.Tensor] = []
        with torch.autocast("cpu", dtype=torch.bfloat16):
            batch = kv_batch.CachedBatch(model, tokenizer.pad_token_id, len(rows))
            batch.extend([rows[0][:2], rows[1][:1], []])
            batch.extend([rows[0][2:], rows[1][1:], rows[2]])  # more columns than the first buffers hold
            for seed in (1, 1, 2):
                torch.manual_seed(seed)
                batch.generate(6, 0.8, set(), on_logits=lambda step: logits.append(step.clone()))
                batch.rollback()
        kinds = {type(layer) for layer in batch.cache.layers}
        assert (DynamicLayer not in kinds) if grow else (kv_batch.GrowingLayer not in kinds)
        if kind != "mistral":  # whose layers all slide (DynamicSlidingWindowLayer, kept as it is)
            assert (kv_batch.GrowingLayer in kinds) == grow
        return logits

    plain, grown = run(False), run(True)
    assert len(plain) == len(grown) == 18
    assert all(torch.equal(p, g) for p, g in zip(plain, grown))
