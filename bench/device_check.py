"""Bake on an accelerator: a smoke benchmark of the CUDA path.

Builds a small random Llama (the default model's tokenizer, 4 layers, width
256) and bakes the pirate prompt into it on `--device`, then checks that the
held-out KL fell and reports wall time per phase. Used on lent GPU machines,
where the default model's weights are not available.

    python bench/device_check.py --tokenizer DIR --device cuda
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from lm_eval_baking import BakeConfig, bake

PIRATE = "You are a pirate. Start every answer with 'Ahoy!'"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="directory holding the default model's tokenizer")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="bf16")
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         initializer_range=0.1, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        LlamaForCausalLM(config).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        result = bake(BakeConfig(prompt=PIRATE, model=str(model_dir), device=args.device, precision=args.precision,
                                 max_new_tokens=32, epochs=2, learning_rate=1e-3), Path(tmp) / "bake")
        record = json.loads((result.output / "baking.json").read_text())
    summary = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "kl_unprompted": result.reference_kl.per_token,
        "kl_baked": result.final_kl.per_token,
        "ratio": result.kl_ratio,
        "performance": record["performance"],
    }
    print(json.dumps(summary, indent=2))
    assert result.final_kl.per_token < result.reference_kl.per_token, "baking did not reduce the held-out KL"


if __name__ == "__main__":
    main()
