"""Benchmark: how the joining template changes what the jointly prompted base does (no training).

A composition's target in joint mode is the base prompted with every prompt joined
(ComposeSettings.join_template). A stage cannot keep more of a prompt than that
target shows, so this screens templates on the default model: for each template,
each prompt's persona checks on the bakes' held-out questions (greedy), with the
joint prompt, next to the base prompted with that prompt alone. Minutes, not hours.
Writes bench/results/join_templates[-NAME].json.

    python bench/join_templates.py [--prompts P1 P2] [--name NAME]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lm_eval_baking import BakeConfig
from lm_eval_baking.compose.behaviour import BehaviourProbe
from lm_eval_baking.compose.config import ComposeSettings
from lm_eval_baking.core import models
from lm_eval_baking.core.stats import bootstrap_ci

PIRATE = "You are a pirate. Start every answer with 'Ahoy!'"
SPANISH = "Always respond in Spanish."
TEMPLATES = [
    "{earlier}\n{prompt}",
    "{earlier} {prompt}",
    "{earlier}\nAlso: {prompt}",
    "Follow all of these instructions at once.\n{earlier}\n{prompt}",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", nargs=2, default=[PIRATE, SPANISH])
    parser.add_argument("--name", default="")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()
    config = BakeConfig(prompt=args.prompts[0], max_new_tokens=args.max_new_tokens)
    model, tokenizer = models.load_model(models.resolve_model(config.model), device="cpu")
    probes = {k: p for k, prompt in enumerate(args.prompts, 1) if (p := BehaviourProbe.for_prompt(prompt, config))}
    # Both orders: a later instruction may win on a small model.
    joints = {f"{t!r}, {order}": ComposeSettings(join_template=t).joined(prompts)
              for t in TEMPLATES for order, prompts in (("in order", args.prompts),
                                                        ("reversed", args.prompts[::-1]))}
    rows = {"alone": {}, **{name: {} for name in joints}}
    for k, probe in probes.items():
        for system, row in [(probe.prompt, rows["alone"]), *((joint, rows[name]) for name, joint in joints.items())]:
            scores = probe.scores(model, tokenizer, system)
            row.update({f"{k}:{check}": _summary(values) for check, values in scores.items()})
    keys = list(rows["alone"])
    print("| system prompt | " + " | ".join(keys) + " |\n| --- |" + " ---: |" * len(keys))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[k]['mean']:.3f} [{row[k]['ci'][0]:.3f}, {row[k]['ci'][1]:.3f}]"
                                          for k in keys) + " |")
    suffix = f"-{args.name}" if args.name else ""
    out = Path(f"bench/results/join_templates{suffix}.json")
    out.write_text(json.dumps({"prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
                               "joint_prompts": joints, "scores": rows}, indent=1))
    print(f"\nwrote {out}")


def _summary(scores: list[float]) -> dict:
    ci = bootstrap_ci(scores)
    return {"mean": sum(scores) / len(scores), "ci": [ci.low, ci.high], "questions": len(scores)}


if __name__ == "__main__":
    main()
