"""Memory per model size, computed from parameter counts (not measured: no GPU here).

For each architecture the parameter counts come from a weightless skeleton of
its published config (typed in below; nothing is downloaded), the LoRA size
from what the default target ('attention') resolves to on it at the default
rank 16. Bytes:

- frozen base: fp32 4, bf16/fp16 2; 4-bit: NF4 with double quantisation,
  4 + 8/64 + 32/(64*256) = 4.127 bits per weight of the decoder's linear layers
  (QLoRA's accounting), the embeddings, output head and norms kept at 2 bytes;
- LoRA: fp32 weight + fp32 gradient + AdamW's two fp32 moments = 16 bytes per
  LoRA parameter, whatever the base precision;
- KL tensors: one [answer positions x vocabulary] fp32 tensor for a default
  step (batch 8 x 48 answer tokens = 384 positions); the loss holds several
  such at once (teacher and student log-probs and their gradient);
  --kl-chunk-size N bounds them to N positions.

Other activations (the decoder's, for the backward pass) depend on the
sequence lengths and are not estimated here.

    python bench/memory_table.py   # writes bench/results/memory_table.json, prints a Markdown table
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lm_eval_baking.core.lora_targets import is_linear, resolve_targets
from lm_eval_baking.core.models import default_model_dir

GIB = 1024 ** 3
NF4_BYTES = (4 + 8 / 64 + 32 / (64 * 256)) / 8
ANSWER_POSITIONS = 8 * 48
RANK = 16

# Published configs (architecture sizes only), as in each model's config.json.
LLAMA3_VOCAB = 128256
CONFIGS = {
    "Llama-3.2-1B": ("llama", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                   num_attention_heads=32, num_key_value_heads=8, vocab_size=LLAMA3_VOCAB,
                                   tie_word_embeddings=True, head_dim=64)),
    "Llama-3.2-3B": ("llama", dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                                   num_attention_heads=24, num_key_value_heads=8, vocab_size=LLAMA3_VOCAB,
                                   tie_word_embeddings=True, head_dim=128)),
    "Mistral-7B-v0.1": ("mistral", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                        num_attention_heads=32, num_key_value_heads=8, vocab_size=32000,
                                        tie_word_embeddings=False)),
    "Qwen2.5-7B": ("qwen2", dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                 num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                                 tie_word_embeddings=False)),
    "Llama-3.1-8B": ("llama", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                   num_attention_heads=32, num_key_value_heads=8, vocab_size=LLAMA3_VOCAB,
                                   tie_word_embeddings=False)),
    "Llama-2-13B": ("llama", dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                                  num_attention_heads=40, num_key_value_heads=40, vocab_size=32000,
                                  tie_word_embeddings=False)),
    "Llama-3.1-70B": ("llama", dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                                    num_attention_heads=64, num_key_value_heads=8, vocab_size=LLAMA3_VOCAB,
                                    tie_word_embeddings=False)),
}


def skeleton(config):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def sizes(model) -> dict:
    params = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings()
    decoder_linear = sum(m.weight.numel() for m in model.modules() if is_linear(m) and m is not head)
    targets = resolve_targets(model, ["attention"])
    modules = dict(model.named_modules())
    lora = 0
    for name in targets.modules:
        layer = modules[name]
        fan_in, fan_out = layer.weight.shape[1], layer.weight.shape[0]
        lora += RANK * (fan_in + fan_out)
    vocab = model.config.vocab_size
    return {
        "parameters": params, "decoder_linear_parameters": decoder_linear, "lora_targets": targets.target_modules,
        "lora_parameters": lora, "vocabulary": vocab,
        "base_gib": {"fp32": params * 4 / GIB, "bf16": params * 2 / GIB,
                     "4bit": (decoder_linear * NF4_BYTES + (params - decoder_linear) * 2) / GIB},
        "lora_and_adamw_gib": lora * 16 / GIB,
        "kl_tensor_gib": ANSWER_POSITIONS * vocab * 4 / GIB,
    }


def main() -> None:
    from transformers import AutoConfig

    rows = {"SmolLM2-135M-Instruct (default)": sizes(skeleton(AutoConfig.from_pretrained(default_model_dir())))}
    for name, (kind, values) in CONFIGS.items():
        rows[name] = sizes(skeleton(AutoConfig.for_model(kind, **values)))
    out = Path(__file__).parent / "results" / "memory_table.json"
    out.write_text(json.dumps({"command": "python bench/memory_table.py", "lora_rank": RANK,
                               "answer_positions": ANSWER_POSITIONS, "models": rows}, indent=2) + "\n")
    print("| model | parameters | base fp32 | base bf16 | base 4-bit | LoRA (attention, r=16) + AdamW | "
          "one KL tensor (384 x vocab, fp32) |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        base = r["base_gib"]
        print(f"| {name} | {r['parameters'] / 1e9:.2f} B | {base['fp32']:.1f} GiB | {base['bf16']:.1f} GiB | "
              f"{base['4bit']:.1f} GiB | {r['lora_parameters'] / 1e6:.1f} M params, "
              f"{r['lora_and_adamw_gib'] * 1024:.0f} MiB | {r['kl_tensor_gib'] * 1024:.0f} MiB |")


if __name__ == "__main__":
    main()
