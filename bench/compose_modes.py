"""Benchmark: two prompts baked one after the other into the default model, in every composition mode.

Pirate, then Spanish (or any two prompts with built-in persona checks), one cycle,
no pursuit: two bakes per mode. Stage 1 (the first prompt alone, nothing before it)
and the reference answers are the same in every mode, so they are baked once and
copied. For each mode and prompt it reports, on the bakes' held-out questions:
the persona-check score of the composed model against the jointly prompted base
(paired, 95% CI), the share of the prompt's behaviour gain over the unprompted base
kept since its own stage (95% CI), and the composed model's MC-KL quality against
the joint target. Writes bench/results/compose_modes[-NAME].json.

    python bench/compose_modes.py [--prompts P1 P2] [--name NAME] [--max-new-tokens 24]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from lm_eval_baking import BakeConfig
from lm_eval_baking.compose.config import ComposeSettings
from lm_eval_baking.compose.sequence import bake_sequence, format_sequence_table

PIRATE = "You are a pirate. Start every answer with 'Ahoy!'"
SPANISH = "Always respond in Spanish."
MODES = {
    "sequential": ComposeSettings(mode="sequential"),
    "joint-base": ComposeSettings(mode="joint", joint_teacher="base"),
    "joint-chain": ComposeSettings(mode="joint", joint_teacher="chain"),
    "replay": ComposeSettings(mode="replay", replay_weight=0.5),
    "merge": ComposeSettings(mode="merge"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", nargs=2, default=[PIRATE, SPANISH])
    parser.add_argument("--name", default="", help="suffix of the results file and work folder")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--work", type=Path, default=Path("bench/work/compose"))
    args = parser.parse_args()
    suffix = f"-{args.name}" if args.name else ""
    work = args.work.with_name(args.work.name + suffix)
    config = BakeConfig(prompt=args.prompts[0], max_new_tokens=args.max_new_tokens)
    results, seconds = {}, {}
    first = None
    for mode in args.modes:
        output = work / mode
        if first is not None and not (output / "stage-1").exists():
            # Stage 1 and the references do not depend on the mode: reuse the first mode's (bake() reuses a
            # finished bake with the same settings and teacher).
            output.mkdir(parents=True, exist_ok=True)
            for part in ("stage-1", "references"):
                shutil.copytree(first / part, output / part)
            # Mark the folder as this mode's sequence (running), as bake_sequence itself would.
            record = json.loads((first / "sequence.json").read_text())
            record.update(status="running", stages=[], config={**record["config"], "compose": asdict(MODES[mode])})
            (output / "sequence.json").write_text(json.dumps(record))
        start = time.perf_counter()
        result = bake_sequence(list(args.prompts), config, output, compose=MODES[mode])
        seconds[mode] = time.perf_counter() - start
        first = first or output
        print(f"\n## {mode} ({seconds[mode] / 60:.1f} min)\n\n" + format_sequence_table(result), flush=True)
        record = json.loads((output / "sequence.json").read_text())
        results[mode] = {"compose": record["config"]["compose"], "stages": record["stages"],
                         "joint_quality": record["joint_quality"], "behaviour": record["behaviour"],
                         "seconds": seconds[mode]}
    out = Path(f"bench/results/compose_modes{suffix}.json")
    out.write_text(json.dumps({"prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
                               "note": "seconds of the first mode include stage 1 and the references",
                               "modes": results}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
