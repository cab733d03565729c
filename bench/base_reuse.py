"""Benchmark: the `forgetting` command for a second adapter, with the base model's scores reused and without.

Three runs of `lm-eval-baking forgetting`, each a fresh process (what a user waits for, imports included), on
one base model and one empty base-model store of their own (a temp folder, never the user's):

    first    adapter 1, the store empty: scores the base model and the adapter, stores the base's scores
    reused   adapter 2: the base's scores come from the store, only the adapter is scored
    again    adapter 2 with --no-reuse-base: the base model is scored again (what every run did before)

`reused / again` is the same-run ratio of what the store saves a second adapter's run; the base's per-doc
scores of `reused` and `again` must be equal. The adapters are random LoRAs (r 8 on q/v, seeds 1 and 2).

    python bench/base_reuse.py                  # the default model, baking_forgetting, --limit 50 per task
    python bench/base_reuse.py --limit 200      # every doc the group keeps (MAX_DOCS)
    python bench/base_reuse.py --quick          # a tiny random model, synthetic BIG-bench data: a smoke run

It prints the table and writes bench/results/base_reuse.json (--json to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUICK_TASK = "baking_forgetting_arithmetic_1_digit_addition"


def random_adapter(model: str, folder: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(folder)
    return folder


def tiny_model(folder: Path) -> str:
    """A 2-layer random Llama with the default model's tokenizer (the tests' tiny model)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lm_eval_baking.core.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("default"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def synthetic_bigbench(folder: Path) -> None:
    """The tests' stand-in BIG-bench data for the quick run's one task (one-digit sums)."""
    examples = [{"input": f"What is {a} plus {b}?", "target": str(a + b),
                 "target_scores": {str(a + b): 1.0, str(a + b + 1): 0.0, "banana": 0.0}}
                for a in range(10) for b in range(10)]
    task = folder / "tasks" / "arithmetic" / "1_digit_addition" / "task.json"
    task.parent.mkdir(parents=True)
    task.write_text(json.dumps({"name": "arithmetic", "examples": examples}))
    (folder / "task_names.json").write_text(json.dumps(["arithmetic", "arithmetic/1_digit_addition"]))


def forgetting(model: str, adapter: Path, output: Path, tasks: list[str], limit: int, env: dict,
               *extra: str) -> tuple[float, dict]:
    """Wall seconds of one `forgetting` command in a fresh process, and its forgetting.json."""
    argv = [sys.executable, "-m", "lm_eval_baking.cli", "forgetting", "--model", model, "--adapters", str(adapter),
            "--tasks", *tasks, "--output", str(output), "--limit", str(limit), "--quiet", *extra]
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1, 3):  # PASS, FAIL, INCONCLUSIVE: a verdict either way
        sys.exit(f"forgetting failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return seconds, json.loads((output / "forgetting.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="'default', a HF id or a model directory")
    parser.add_argument("--tasks", nargs="+", default=["baking_forgetting"], help="lm_eval tasks or groups")
    parser.add_argument("--limit", type=int, default=50, help="docs per task")
    parser.add_argument("--quick", action="store_true", help="a tiny random model, one synthetic task, 4 docs")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "base_reuse.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval_baking.constants import BASE_STORE_ENV
    from lm_eval_baking.core.models import resolve_model
    from lm_eval_baking.evals.bigbench import BIGBENCH_DIR_ENV

    work = Path(tempfile.mkdtemp(prefix="bench-base-reuse-"))
    env = {**os.environ, BASE_STORE_ENV: str(work / "store"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if args.quick:
        args.tasks, args.limit = [QUICK_TASK], 4
        model = tiny_model(work / "tiny-model")
        synthetic_bigbench(work / "bigbench")
        env[BIGBENCH_DIR_ENV] = str(work / "bigbench")
    else:
        model = resolve_model(args.model)
    adapters = [random_adapter(model, work / f"adapter-{seed}", seed) for seed in (1, 2)]

    runs = {}
    for name, adapter, extra in (("first", adapters[0], ()), ("reused", adapters[1], ()),
                                 ("again", adapters[1], ("--no-reuse-base",))):
        seconds, report = forgetting(model, adapter, work / name, args.tasks, args.limit, env, *extra)
        runs[name] = {"seconds": seconds, "base_reused": report.get("base_reused", []),
                      "base_per_doc": report["per_doc"]["base"]}
        print(f"{name:>7}: {seconds:7.1f} s   base reused on {len(runs[name]['base_reused'])} of "
              f"{len(report['tasks'])} tasks", flush=True)
    same = runs["reused"]["base_per_doc"] == runs["again"]["base_per_doc"]
    ratio = runs["reused"]["seconds"] / runs["again"]["seconds"]
    print(f"\n| run, adapter 2 | seconds |\n| --- | ---: |\n| base scored again (--no-reuse-base) | "
          f"{runs['again']['seconds']:.1f} |\n| base reused from the store | {runs['reused']['seconds']:.1f} |\n"
          f"| **reused / again** | **{ratio:.2f}** |\n\nbase per-doc scores equal: {same}")
    result = {"model": args.model if not args.quick else "tiny random model", "tasks": args.tasks,
              "limit": args.limit, "quick": args.quick, "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "threads": os.environ.get("OMP_NUM_THREADS"),
              "seconds": {name: run["seconds"] for name, run in runs.items()},
              "reused_over_again": ratio, "first_over_reused": runs["first"]["seconds"] / runs["reused"]["seconds"],
              "base_reused_tasks": runs["reused"]["base_reused"], "base_scores_equal": same}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    if not same:
        sys.exit("the reused base scores differ from the ones scored again")


if __name__ == "__main__":
    main()
