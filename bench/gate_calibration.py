"""Is the forgetting gate calibrated? It must never FAIL a near-null change and must FAIL a damaged adapter.

On the forgetting group (every doc, at most 200 per task), paired per doc against the base model in fp32:

- near-null: the same base model in bf16 (only rounding differs), judged at the 3.4% allowed drop, plus its
  false-FAIL rate over bootstrap replicates of the docs;
- damaged: the bake at strength 4 (its update scaled 4x), and the bake with Gaussian noise added to its LoRA
  weights (noise sd = NOISE x the sd of each LoRA matrix).

    python bench/gate_calibration.py --bake adapters/pirate --output bench/results/gate_calibration.json

The base model's fp32 scores are read from a `lm-eval-baking forgetting` report when one is given
(`--forgetting reports/measure/forgetting-pirate/forgetting.json`), so they are not computed twice.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lm_eval_baking.artifacts.lora import export_strength
from lm_eval_baking.core.verdicts import MAX_FORGETTING_DROP_PCT, false_fail_rate
from lm_eval_baking.evals.forgetting import DEFAULT_TASKS, score_models
from lm_eval_baking.results.forgetting import (
    ForgettingRecord, build_report, format_summary, rebuild_report, stored_per_doc,
)
from lm_eval_baking.utils.atomic import write_json

THRESHOLD_PCT = MAX_FORGETTING_DROP_PCT
NOISE = 3.0


def noisy_copy(bake: Path, output: Path, scale: float, seed: int = 0) -> Path:
    """The bake's adapter with N(0, (scale * sd)^2) added to every LoRA matrix (sd of that matrix)."""
    if output.exists():
        shutil.rmtree(output)
    shutil.copytree(bake, output, ignore=shutil.ignore_patterns("checkpoints", "data", "baking.json"))
    weights = load_file(str(bake / "adapter_model.safetensors"))
    generator = torch.Generator().manual_seed(seed)
    noisy = {name: w + scale * w.float().std() * torch.randn(w.shape, generator=generator) for name, w in weights.items()}
    save_file({k: v.contiguous() for k, v in noisy.items()}, str(output / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bake", type=Path, help="a pirate bake folder (not needed with --rejudge)")
    parser.add_argument("--model", default="default", help="its base model")
    parser.add_argument("--forgetting", type=Path, help="a forgetting.json with the base model's fp32 per-doc scores")
    parser.add_argument("--work", type=Path, default=Path("bench/results/gate-calibration-adapters"),
                        help="folder for the damaged adapters")
    parser.add_argument("--replicates", type=int, default=20, help="bootstrap replicates of the false-FAIL rate")
    parser.add_argument("--output", type=Path, default=Path("bench/results/gate_calibration.json"))
    parser.add_argument("--rejudge", action="store_true",
                        help="judge --output's stored per-doc scores again with today's statistics (no model runs)")
    args = parser.parse_args()
    if not args.rejudge and args.bake is None:
        parser.error("--bake is needed to build the damaged adapters (or pass --rejudge)")
    if args.rejudge:
        summary = json.loads(args.output.read_text())
        report = rebuild_report(ForgettingRecord.from_dict(summary["report"], f"{args.output}'s report"))
        summarise(args, report, stored_per_doc(report), report.tasks, report.adapters, summary["seconds"])
        return

    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    strength4 = export_strength(args.bake, 4.0, args.work / "strength-4", overwrite=True)
    noisy = noisy_copy(args.bake, args.work / f"noise-{NOISE:g}", NOISE)

    # The base model's fp32 scores come from the forgetting report when given (the same docs and settings).
    fp32 = score_models(args.model, [str(strength4), str(noisy)], DEFAULT_TASKS, include_base=not args.forgetting,
                        progress=True)
    bf16 = score_models(args.model, [], DEFAULT_TASKS, dtype="bfloat16", progress=True)
    tasks = fp32.tasks
    per_doc = {adapter: {t: s.per_doc for t, s in by_task.items()} for adapter, by_task in fp32.scores.items()}
    if args.forgetting:
        per_doc[None] = stored_per_doc(ForgettingRecord.from_file(args.forgetting))[None]
    per_doc["base in bf16"] = {t: s.per_doc for t, s in bf16.scores[None].items()}
    compared = ["base in bf16", str(strength4), str(noisy)]
    report = build_report(fp32.base_model, compared, tasks, per_doc, THRESHOLD_PCT)
    summarise(args, report, per_doc, tasks, compared, time.perf_counter() - started)


def summarise(args, report: ForgettingRecord, per_doc: dict, tasks: list[str], compared: list[str], seconds: float) -> None:
    """Verdicts, false-FAIL rates over bootstrap replicates of the pooled docs, written to --output."""
    pooled_base = [v for t in tasks for _, v in sorted(per_doc[None][t].items())]
    rates = {}
    for name in compared:
        pooled = [v for t in tasks for _, v in sorted(per_doc[name][t].items())]
        rates[name] = false_fail_rate(pooled_base, pooled, THRESHOLD_PCT / 100, relative=True,
                                      replicates=args.replicates)
    summary = {
        "threshold_pct": THRESHOLD_PCT,
        "verdicts": {name: report.per_adapter[name]["verdict"] for name in compared},
        "fail_rate_over_replicates": rates,
        "replicates": args.replicates,
        "noise_scale": NOISE,
        "seconds": seconds,
        "report": report.to_dict(),
    }
    write_json(args.output, summary)
    print(format_summary(report))
    print(f"\nFAIL share over {args.replicates} bootstrap replicates of the docs: "
          + ", ".join(f"{name}: {rate:.0%}" for name, rate in rates.items()))
    print(f"Wrote {args.output} ({summary['seconds'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
