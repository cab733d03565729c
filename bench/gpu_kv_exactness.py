"""On a GPU: does the drift conversations' KV cache (core/kv_batch.CachedBatch) still sample exactly what one
generate() call samples? The CPU test (tests/training/test_architectures.py) shows it in fp32 on 7 architectures;
CUDA kernels pick different reduction orders, so here each architecture is run on `--device` in fp32 and bf16
and the share of tokens equal to generate()'s is printed as JSON (1.0 = identical).

    python bench/gpu_kv_exactness.py --tokenizer DIR --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path[:0] = [str(Path(__file__).parents[1] / "tests"), str(Path(__file__).parents[1] / "tests" / "training")]
from conftest import tiny_architecture_config  # noqa: E402  one config per family
from test_architectures import EXPECTED_TARGETS  # noqa: E402

from lm_eval_baking.core.batching import pad  # noqa: E402
from lm_eval_baking.core.kv_batch import CachedBatch  # noqa: E402


def agreement(kind: str, tokenizer, device: str, dtype) -> dict:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_architecture_config(kind, tokenizer)).to(device, dtype).eval()
    rows = [tokenizer.encode("Hello there, how are you doing today? I am"), tokenizer.encode("The sea is"),
            tokenizer.encode("One two three four five six")]
    stop = {tokenizer.eos_token_id}
    batch = CachedBatch(model, tokenizer.pad_token_id, len(rows))
    batch.extend([rows[0][:3], rows[1], []])
    batch.extend([rows[0][3:], [], rows[2]])
    ids, mask = pad(rows, tokenizer.pad_token_id, left=True)
    ids, mask = ids.to(device), mask.to(device)
    shares = {}
    for temperature in (0.0, 0.8):
        torch.manual_seed(1)
        cached = batch.generate(16, temperature, stop)
        batch.rollback()
        torch.manual_seed(1)
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature else \
            dict(do_sample=False)
        plain = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16,
                               pad_token_id=tokenizer.pad_token_id, eos_token_id=sorted(stop), **sampling)
        plain = [row[ids.shape[1]:].tolist() for row in plain]
        pairs = [(a, b) for c, p in zip(cached, plain) for a, b in zip(c, p)]
        shares["greedy" if temperature == 0 else f"t={temperature}"] = \
            sum(a == b for a, b in pairs) / max(len(pairs), 1)
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    out = {dtype_name: {kind: agreement(kind, tokenizer, args.device, dtype) for kind in sorted(EXPECTED_TARGETS)}
           for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    print(json.dumps({"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
                      "torch": torch.__version__, "share_of_tokens_equal_to_generate": out}, indent=2))


if __name__ == "__main__":
    main()
