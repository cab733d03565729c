"""Shared fixtures: a tiny random Llama that uses the default model's tokenizer.

Fast unit tests run on `tiny_model_dir`: a real HF model directory (2 layers,
hidden size 32) built from a config, so PEFT, lm_eval and our code all load it
through their normal paths. Tests marked `slow` use the embedded default model.
"""

from __future__ import annotations

import os

# Nothing in the test suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

PIRATE = "You are a pirate. Start every answer with 'Ahoy!'"
QUESTIONS = "\n".join(f"Tell me fact number {i} about {topic}." for i, topic in enumerate(
    ["cats", "rivers", "bread", "stars", "trains", "music", "rain", "chess", "salt", "maps", "wolves", "glass"]))


def tiny_config(tiny_model_dir, question_file, **overrides):
    """A BakeConfig small enough to bake the tiny model in seconds (12 questions, 8-token answers)."""
    from lm_eval_baking import BakeConfig

    settings = dict(prompt=PIRATE, model=str(tiny_model_dir), questions=str(question_file), heldout_fraction=0.25,
                    samples_per_question=2, heldout_samples_per_question=1, max_new_tokens=8, epochs=2, batch_size=4, learning_rate=2e-2,
                    lora_rank=4, lora_alpha=8, precision="fp32", seed=0)
    settings.update(overrides)
    return BakeConfig(**settings)


@pytest.fixture(scope="session")
def default_model_dir():
    from lm_eval_baking.core.models import default_model_dir as prepare

    return prepare()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_model_dir):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def question_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("questions") / "questions.txt"
    path.write_text(QUESTIONS)
    return path
