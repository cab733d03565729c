"""Prepared for a lent GPU (never run here: no GPU was lent): a large random-init model baked in bf16 or 4-bit.

Builds a model of one of bench/memory_table.py's published configs with
random weights (the default model's tokenizer, so its vocabulary), saves it,
bakes the pirate prompt with small sizes, and prints peak GPU memory and the
bake's tokens/s as JSON. One size per run; pick the largest that fits.

    python bench/gpu_scale_check.py --config Llama-3.1-8B --tokenizer "$(lm-eval-baking model default)" --dtype bf16
    python bench/gpu_scale_check.py --config Llama-3.1-8B --tokenizer ... --load-in-4bit
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from lm_eval_baking import BakeConfig, bake, load_bake_record
from memory_table import CONFIGS

PIRATE = "You are a pirate. Start every answer with 'Ahoy!'"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), required=True)
    parser.add_argument("--tokenizer", required=True, help="a directory with a chat-templated tokenizer")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--load-in-4bit", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "gpu-scale-check")
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    kind, values = CONFIGS[args.config]
    config = AutoConfig.for_model(kind, **{**values, "vocab_size": len(tokenizer)},
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id)
    model_dir = args.workdir / f"{args.config}-random"
    if not (model_dir / "config.json").is_file():
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        del model
        torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    suffix = "4bit" if args.load_in_4bit else args.dtype
    result = bake(BakeConfig(prompt=PIRATE, model=str(model_dir), dtype=args.dtype, load_in_4bit=args.load_in_4bit,
                             device="cuda", max_new_tokens=32, min_trajectories=64, min_heldout_answers=16,
                             min_steps=8), args.workdir / f"bake-{args.config}-{suffix}", overwrite=True)
    record = load_bake_record(result.output)
    print(json.dumps({
        "config": args.config, "dtype": args.dtype, "load_in_4bit": args.load_in_4bit,
        "gpu": torch.cuda.get_device_name(), "wall_s": time.perf_counter() - start,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 1024 ** 3,
        "generation_tokens_per_s": record["performance"]["generation_tokens_per_s"],
        "training_tokens_per_s": record["performance"]["training_tokens_per_s"],
        "kl_ratio": result.kl_ratio,
    }, indent=2))


if __name__ == "__main__":
    main()
