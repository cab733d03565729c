"""Benchmark: the pirate bake on the embedded default model, end to end.

Reports wall time per phase, generation and training tokens/s, peak memory,
held-out KL, and the greedy "Ahoy" opening rate on held-out questions for the
unprompted base, the prompted base, the baked model and the re-prompted baked
model. Writes bench/results/bake_pirate.json and prints a Markdown table.

    python bench/bake_pirate.py [--output adapters/pirate] [--overwrite]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from lm_eval_baking import BakeConfig, bake, load_bake_record
from lm_eval_baking.core.models import load_model
from lm_eval_baking.core.questions import load_questions, split_questions
from lm_eval_baking.core.sampling import sample_trajectories

PIRATE = "You are a pirate. Start every answer with 'Ahoy!'"


def opens_with_ahoy(answer: str) -> bool:
    return answer.lstrip().lower().startswith("ahoy")


def greedy_ahoy_rates(base_model: str, adapter: Path, config: BakeConfig) -> dict[str, float]:
    """Greedy opening rate on the bake's held-out questions, with and without the prompt."""
    from peft import PeftModel

    _, heldout = split_questions(load_questions(config.questions), config.heldout_fraction, config.seed)
    model, tokenizer = load_model(base_model)
    model = PeftModel.from_pretrained(model, adapter)

    def rate(system_prompt):
        answers = sample_trajectories(model, tokenizer, heldout, system_prompt=system_prompt, temperature=0,
                                      max_new_tokens=8, batch_size=64, progress=False)
        return sum(opens_with_ahoy(a.answer) for a in answers) / len(answers)

    with model.disable_adapter():
        rates = {"base": rate(None), "prompted base": rate(PIRATE)}
    rates.update({"baked": rate(None), "baked + prompt": rate(PIRATE)})
    return {"n_questions": len(heldout), **rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("adapters/pirate"))
    parser.add_argument("--overwrite", action="store_true", help="re-bake even if the output holds this bake")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "bake_pirate.json")
    args = parser.parse_args()

    config = BakeConfig(prompt=PIRATE)
    start = time.perf_counter()
    result = bake(config, args.output, overwrite=args.overwrite)
    bake_wall = time.perf_counter() - start
    record = load_bake_record(args.output)
    rates = greedy_ahoy_rates(result.base_model, args.output, config)

    report = {
        "machine": {"threads": torch.get_num_threads()},
        "bake_wall_s": None if result.reused else bake_wall,
        "performance": record["performance"],
        "kl": {"unprompted_base": record["kl"]["unprompted_base"]["per_token"],
               "baked": record["kl"]["final_per_token"], "ratio": record["kl"]["ratio_to_unprompted"]},
        "greedy_ahoy_rate": rates,
        "peak_rss_mb_incl_rate_eval": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")

    perf = record["performance"]
    print("\n| phase | seconds |\n| --- | ---: |")
    for phase, seconds in perf["seconds"].items():
        print(f"| {phase} | {seconds:.1f} |")
    print(f"| **bake total** | **{sum(perf['seconds'].values()):.1f}** |")
    print(f"\ngeneration {perf['generation_tokens_per_s']:.0f} tok/s, training {perf['training_tokens_per_s']:.0f} "
          f"answer tok/s, peak RSS {perf['peak_rss_mb']:.0f} MB")
    kl = report["kl"]
    print(f"held-out KL/token: unprompted base {kl['unprompted_base']:.4f}, baked {kl['baked']:.4f} "
          f"({kl['ratio']:.1%})")
    print(f"\n| greedy, {rates['n_questions']} held-out questions | opens with 'Ahoy' |\n| --- | ---: |")
    for variant in ("base", "prompted base", "baked", "baked + prompt"):
        print(f"| {variant} | {rates[variant]:.1%} |")


if __name__ == "__main__":
    main()
