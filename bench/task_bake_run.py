"""One task bake, measured: base 0-shot / k-shot and baked 0-shot / k-shot through lm_eval, paired doc by doc.

    flock /tmp/lm-eval-baking-heavy.lock python bench/task_bake_run.py --task baking_fewshot_plural \
        --prompt-format text --output bench/results/text_prefix_bake.json

`--prompt-format text` switches the default model's chat template off: the bake's prompt is
lm_eval's plain-text k-shot context, and every evaluation runs without --apply_chat_template,
as lm_eval evaluates a base model. Writes the bake to `--bake-dir` and the numbers to `--output`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, help="an lm_eval task with few-shot examples")
    parser.add_argument("--prompt-format", default="auto", choices=("auto", "chat", "text"), help="the prompt's form")
    parser.add_argument("--limit", type=int, default=100, help="test docs scored")
    parser.add_argument("--max-task-questions", type=int, default=200, help="questions the bake samples answers for")
    parser.add_argument("--samples-per-question", type=int, default=1, help="training answers per question")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="answer length cap of the bake")
    parser.add_argument("--epochs", type=int, default=1, help="bake epochs")
    parser.add_argument("--bake-dir", type=Path, required=True, help="where the bake is written (reused if identical)")
    parser.add_argument("--output", type=Path, required=True, help="JSON file for the numbers")
    args = parser.parse_args()

    from lm_eval_baking.core import models
    from lm_eval_baking.core.stats import compare_paired, ratio_quality_ci
    from lm_eval_baking.evals.config import TaskPromptSettings
    from lm_eval_baking.evals.forgetting import evaluate_task, load_lm
    from lm_eval_baking.evals.task_prompts import task_manager
    from lm_eval_baking.training.config import BakeConfig
    from lm_eval_baking.workflows.task_bake import bake_task

    config = BakeConfig(prompt="placeholder", prompt_format=args.prompt_format, max_new_tokens=args.max_new_tokens,
                        samples_per_question=args.samples_per_question, epochs=args.epochs, device="cpu")
    start = time.perf_counter()
    result = bake_task(args.task, config, args.bake_dir, TaskPromptSettings(max_task_questions=args.max_task_questions))
    bake_seconds = time.perf_counter() - start
    chat = result.prompt_form == "chat"
    k = json.loads((args.bake_dir / "baking.json").read_text())["task"]["num_fewshot"]
    base = models.resolve_model("default")
    manager = task_manager([args.task])
    per_doc, seconds = {}, {}
    for name, adapter in (("base", None), ("baked", str(args.bake_dir))):
        lm = load_lm(base, adapter, 16, "cpu", None)
        for shots in (0, k):
            start = time.perf_counter()
            scores = evaluate_task(lm, args.task, manager, args.limit, chat, num_fewshot=shots)
            seconds[f"{name} {shots}-shot"] = time.perf_counter() - start
            per_doc[f"{name} {shots}-shot"] = [scores.per_doc[i] for i in sorted(scores.per_doc)]
    b0, bk, t0, tk = (per_doc[f"{m} {s}-shot"] for m, s in (("base", 0), ("base", k), ("baked", 0), ("baked", k)))

    def paired(a, b):
        c = compare_paired(a, b)
        return {"difference": c.difference, "ci": [c.difference_ci.low, c.difference_ci.high], "p": c.p_value}

    kshot_gain = compare_paired(b0, bk).difference
    share_ci = ratio_quality_ci([x - y for x, y in zip(bk, t0)], [x - y for x, y in zip(bk, b0)])
    out = {
        "task": args.task, "form": result.prompt_form, "num_fewshot": k, "n": len(b0), "settings": vars(args) | {
            "bake_dir": str(args.bake_dir), "output": str(args.output)},
        "means": {name: sum(v) / len(v) for name, v in per_doc.items()},
        "kshot_gain": paired(b0, bk), "baked_gain": paired(b0, t0), "baked_vs_base_kshot": paired(bk, t0),
        "reprompted_vs_base_kshot": paired(bk, tk),
        "share_kept": (compare_paired(b0, t0).difference / kshot_gain) if kshot_gain else None,
        "share_kept_ci": [share_ci.low, share_ci.high],
        "bake": {"kl_unprompted": result.reference_kl.per_token, "kl_baked": result.final_kl.per_token,
                 "kl_ratio": result.kl_ratio, "seconds": bake_seconds, "status": result.status},
        "eval_seconds": seconds, "per_doc": per_doc,
    }
    args.output.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "per_doc"}, indent=1))


if __name__ == "__main__":
    main()
