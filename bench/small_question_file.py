"""Benchmark: the pirate bake from a 12-question file with default settings, on the embedded default model.

Two bakes from bench/data/questions_12.txt (10 training, 2 held-out questions):

- `defaults`: every default; the budget gives 26 answers per training question
  (>= 256 trajectories), 32 per held-out question (>= 64) and 1 epoch of 33 steps;
- `old sizes`: the sizes the defaults used to give any question file (1 answer
  per question, 1 epoch: 2 optimiser steps). Its held-out answers are the same
  ones (same questions, same seed), so the two KL ratios compare directly.

Their held-out KL ratios are compared with the default-pool bake's
(bench/results/bake_pirate.json). Behaviour on unseen questions: the 64
held-out questions of the built-in pool (never seen by these bakes), 8 answers
each at T=1 and one greedy answer, 8 tokens: how many open with "Ahoy" for the
unprompted base, the prompted base and both bakes, with paired comparisons
(per question) against the prompted base.

    python bench/small_question_file.py [--adapters adapters] [--overwrite]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lm_eval_baking import BakeConfig, bake, load_bake_record
from lm_eval_baking.core.models import load_model
from lm_eval_baking.core.questions import load_questions, split_questions
from lm_eval_baking.core.sampling import sample_trajectories
from lm_eval_baking.core.stats import compare_paired

PIRATE = "You are a pirate. Start every answer with 'Ahoy!'"
HERE = Path(__file__).parent
QUESTIONS = HERE / "data" / "questions_12.txt"
SAMPLES = 8


def opens_with_ahoy(answer: str) -> bool:
    return answer.lstrip().lower().startswith("ahoy")


def behaviour(base_model: str, adapters: dict[str, Path]) -> dict:
    """Per variant: 'Ahoy' openings on the built-in pool's 64 held-out questions (greedy and sampled)."""
    from peft import PeftModel

    _, unseen = split_questions(load_questions(), BakeConfig(prompt=PIRATE).heldout_fraction, 0)
    model, tokenizer = load_model(base_model)
    names = list(adapters)
    model = PeftModel.from_pretrained(model, adapters[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(adapters[name], adapter_name=name)

    def openings(system_prompt, temperature, samples):
        # The same seed for every variant: common random numbers make the paired comparison sharper.
        answers = sample_trajectories(model, tokenizer, unseen, system_prompt=system_prompt, temperature=temperature,
                                      samples_per_question=samples, max_new_tokens=8, batch_size=64, seed=7,
                                      progress=False)
        per_question = [0] * len(unseen)
        for i, a in enumerate(answers):
            per_question[i // samples] += opens_with_ahoy(a.answer)
        return per_question

    runs = {}
    with model.disable_adapter():
        runs["unprompted base"] = (openings(None, 0, 1), openings(None, 1.0, SAMPLES))
        runs["prompted base"] = (openings(PIRATE, 0, 1), openings(PIRATE, 1.0, SAMPLES))
    for name in names:
        model.set_adapter(name)
        runs[f"baked ({name})"] = (openings(None, 0, 1), openings(None, 1.0, SAMPLES))
    prompted_sampled = [k / SAMPLES for k in runs["prompted base"][1]]
    out = {"questions": len(unseen), "samples_per_question": SAMPLES, "max_new_tokens": 8, "variants": {}}
    for variant, (greedy, sampled) in runs.items():
        rates = [k / SAMPLES for k in sampled]
        entry = {"greedy_ahoy": sum(greedy), "greedy_n": len(greedy),
                 "sampled_ahoy": sum(sampled), "sampled_n": len(sampled) * SAMPLES}
        if variant != "prompted base":
            c = compare_paired(prompted_sampled, rates)
            entry["sampled_vs_prompted"] = {"difference": c.difference, "ci95": [c.difference_ci.low, c.difference_ci.high],
                                            "p": c.p_value}
        out["variants"][variant] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=Path, default=Path("adapters"))
    parser.add_argument("--overwrite", action="store_true", help="re-bake even if the outputs hold these bakes")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "small_question_file.json")
    args = parser.parse_args()

    configs = {
        "defaults": BakeConfig(prompt=PIRATE, questions=str(QUESTIONS)),
        "old sizes": BakeConfig(prompt=PIRATE, questions=str(QUESTIONS), samples_per_question=1, epochs=1),
    }
    outputs = {"defaults": args.adapters / "pirate-12q", "old sizes": args.adapters / "pirate-12q-old-sizes"}
    bakes = {}
    for name, config in configs.items():
        start = time.perf_counter()
        result = bake(config, outputs[name], overwrite=args.overwrite)
        record = load_bake_record(outputs[name])
        bakes[name] = {"output": str(outputs[name]), "wall_s": None if result.reused else time.perf_counter() - start,
                       "budget": record["training"]["budget"], "kl": {
                           "unprompted_base": record["kl"]["unprompted_base"]["per_token"],
                           "baked": record["kl"]["final_per_token"], "ratio": record["kl"]["ratio_to_unprompted"],
                           "n_heldout_answers": record["kl"]["unprompted_base"]["n_sequences"]},
                       "status": record["status"], "warnings": record["warnings"],
                       "seconds": record["performance"]["seconds"]}
    pool = json.loads((HERE / "results" / "bake_pirate.json").read_text())["kl"]["ratio"]
    t0 = time.perf_counter()
    rates = behaviour(str(load_bake_record(outputs["defaults"])["base_model"]["name_or_path"]),
                      {"defaults": outputs["defaults"], "old sizes": outputs["old sizes"]})
    report = {
        "command": "python bench/small_question_file.py",
        "machine": {"threads": torch.get_num_threads()},
        "bakes": bakes,
        "default_pool_ratio": pool,
        "ratio_over_pool": bakes["defaults"]["kl"]["ratio"] / pool,
        "behaviour_on_unseen_questions": rates,
        "behaviour_wall_s": time.perf_counter() - t0,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")

    print("\n| bake (12-question file) | answers x epochs | steps | held-out KL ratio | status |\n| --- | --- | ---: | ---: | --- |")
    for name, b in bakes.items():
        budget = b["budget"]
        print(f"| {name} | {budget['trajectories']} x {budget['epochs']} | {budget['steps']} | {b['kl']['ratio']:.1%} "
              f"| {b['status']} |")
    print(f"| default pool (bench/results/bake_pirate.json) | 256 x 1 | 32 | {pool:.1%} | |")
    print(f"\nratio / pool ratio: {report['ratio_over_pool']:.2f} (must be <= 1.5)")
    print(f"\n| {rates['questions']} unseen questions | greedy 'Ahoy' | sampled 'Ahoy' (x{SAMPLES}) | vs prompted |\n"
          "| --- | ---: | ---: | --- |")
    for variant, r in rates["variants"].items():
        versus = r.get("sampled_vs_prompted")
        shown = (f"{versus['difference']:+.3f} [{versus['ci95'][0]:+.3f}, {versus['ci95'][1]:+.3f}], p={versus['p']:.3g}"
                 if versus else "")
        print(f"| {variant} | {r['greedy_ahoy']}/{r['greedy_n']} | {r['sampled_ahoy']}/{r['sampled_n']} | {shown} |")


if __name__ == "__main__":
    main()
