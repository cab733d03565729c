"""Benchmark: prompt pursuit and half-baking of the pirate prompt on the embedded default model.

Bakes a fixed number of pursuit rounds (default 3) and reports per round, on
the bake's held-out questions:
- the greedy "Ahoy" opening rate without a system prompt, and re-prompted;
- the Monte-Carlo KL (per answer token) from the ORIGINAL prompted base, on
  round 1's held-out answers (samples of the original prompted base), and the
  quality 1 − KL/KL_unprompted;
and the same for the round-1 bake exported at strengths 0, .25, .5, .75, 1.
It also says where `pursue`'s stopping rule (with the Ahoy rate as the score)
would have stopped. Prints Markdown tables, writes bench/results/pursuit_pirate.json.

    python bench/pursuit_pirate.py [--output adapters/pursuit-pirate] [--rounds 3]

On 2 shared CPU cores a default bake of the 320 built-in questions took over
20 minutes per round under load, so `--n-questions` and `--max-new-tokens`
shrink each round (the Ahoy opening sits in the first tokens anyway).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from lm_eval_baking import BakeConfig
from lm_eval_baking.utils.atomic import write_jsonl
from lm_eval_baking.core.models import load_model
from lm_eval_baking.evals.personas import get_persona
from lm_eval_baking.artifacts.lora import export_strength
from lm_eval_baking.compose.config import PursuitSettings
from lm_eval_baking.compose.evaluators import AdherenceEvaluator, QualityEvaluator, heldout_questions
from lm_eval_baking.compose.pursuit import pursue, relative_improvement, stop_decision
from lm_eval_baking.core.questions import load_questions

PIRATE = "You are a pirate. Start every answer with 'Ahoy!'"
STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


class PirateMetrics:
    """A pursuit evaluator that records the Ahoy rate and MC-KL of every model it sees.

    It returns the round index as the score, so pursuit always runs the full
    number of rounds; the stopping rule is applied afterwards to the Ahoy rates.
    """

    name = "bench: fixed rounds (score = round index)"

    def __init__(self, config: BakeConfig, output: Path, ahoy_tokens: int):
        self.ahoy = AdherenceEvaluator(get_persona("pirate"), heldout_questions(config), max_new_tokens=ahoy_tokens)
        self.output = output
        self.rows: dict[tuple[int, bool], dict] = {}
        self._quality: QualityEvaluator | None = None

    @property
    def quality(self) -> QualityEvaluator:
        if self._quality is None:  # round 1's held-out data exist once round 1 is baked
            self._quality = QualityEvaluator.from_bake(self.output / "round-1")
        return self._quality

    def measure(self, model, tokenizer, system_prompt: str | None = None) -> dict:
        kl = self.quality.kl(model, tokenizer, system_prompt)
        return {"ahoy_rate": self.ahoy(model, tokenizer, 0, system_prompt=system_prompt),
                "mc_kl_per_token": kl.per_token, "mc_kl_stderr": kl.per_token_stderr,
                "quality": 1 - kl.per_token / self.quality.unprompted_kl.per_token}

    def __call__(self, model, tokenizer, round_index: int, *, system_prompt: str | None = None) -> float:
        self.rows[(round_index, system_prompt is not None)] = self.measure(model, tokenizer, system_prompt)
        return float(round_index)


def where_pursuit_stops(ahoy_by_round: list[float], settings: PursuitSettings) -> dict:
    """Replay `pursue`'s stopping rule on the Ahoy rates of rounds 1..N."""
    for index in range(2, len(ahoy_by_round) + 1):
        improvement = relative_improvement(ahoy_by_round[index - 2], ahoy_by_round[index - 1])
        reason = stop_decision(index, improvement, settings)
        if reason:
            best = max(range(1, index + 1), key=lambda i: ahoy_by_round[i - 1])
            return {"stop_round": index, "reason": reason, "best_round": best}
    return {"stop_round": None, "reason": f"still improving after {len(ahoy_by_round)} rounds", "best_round": None}


def strength_table(metrics: PirateMetrics, config: BakeConfig, output: Path) -> list[dict]:
    from peft import PeftModel

    rows = []
    for strength in STRENGTHS:
        adapter = export_strength(output / "round-1", strength, output / f"strength-{strength:g}", overwrite=True)
        model, tokenizer = load_model(config.model)
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()
        rows.append({"strength": strength, **metrics.measure(model, tokenizer)})
    return rows


def question_subset(n: int, output: Path) -> str:
    """A seeded sample of n built-in questions (all categories), written beside the rounds."""
    questions = load_questions("builtin")
    if n >= len(questions):
        return "builtin"
    path = output / f"questions-{n}.jsonl"
    if not path.is_file():
        chosen = random.Random(0).sample(questions, n)
        write_jsonl(path, ({"question": q.text, "category": q.category} for q in chosen))
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("adapters/pursuit-pirate"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ahoy-tokens", type=int, default=8, help="greedy tokens per answer for the Ahoy check")
    parser.add_argument("--min-improvement", type=float, default=0.01, help="for the replayed stopping rule")
    parser.add_argument("--model", default="default", help="(a tiny model here makes a quick smoke run)")
    parser.add_argument("--questions", default="builtin")
    parser.add_argument("--n-questions", type=int, help="use a seeded sample of this many built-in questions")
    parser.add_argument("--max-new-tokens", type=int, default=BakeConfig.max_new_tokens)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "pursuit_pirate.json")
    args = parser.parse_args()

    questions = question_subset(args.n_questions, args.output) if args.n_questions else args.questions
    config = BakeConfig(prompt=PIRATE, model=args.model, questions=questions, max_new_tokens=args.max_new_tokens)
    metrics = PirateMetrics(config, args.output, args.ahoy_tokens)
    start = time.perf_counter()
    result = pursue(config, args.output, max_rounds=args.rounds, min_improvement=0.0, evaluator=metrics)
    pursuit_s = time.perf_counter() - start
    start = time.perf_counter()
    strengths = strength_table(metrics, config, args.output)
    strength_s = time.perf_counter() - start

    rounds = []
    for r in result.rounds:
        rounds.append({"round": r.round, "unprompted": metrics.rows[(r.round, False)],
                       "reprompted": metrics.rows[(r.round, True)], "heldout_kl_to_teacher": r.heldout_kl,
                       "kl_ratio_to_teacher": r.kl_ratio})
    ahoy = [row["unprompted"]["ahoy_rate"] for row in rounds[1:]]
    stop = where_pursuit_stops(ahoy, PursuitSettings(args.rounds, args.min_improvement, "ahoy rate"))
    report = {
        "machine": {"threads": torch.get_num_threads()},
        "config": config.to_dict(),
        "n_heldout_questions": len(metrics.ahoy.questions),
        "ahoy_tokens": args.ahoy_tokens,
        "mc_kl": "per answer token, from the original prompted base, on round-1 held-out answers "
                 f"({len(metrics.quality.heldout)} answers)",
        "unprompted_base_mc_kl": metrics.quality.unprompted_kl.per_token,
        "rounds": rounds,
        "pursuit_stop_with_ahoy_score": stop,
        "strengths": strengths,
        "wall_s": {"pursuit": pursuit_s, "strength_table": strength_s},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")

    print(f"\n{report['n_heldout_questions']} held-out questions; greedy, {args.ahoy_tokens} tokens for the Ahoy "
          f"check; MC-KL {report['mc_kl']}\n")
    print("| round | Ahoy rate | Ahoy rate + prompt | MC-KL | quality | MC-KL + prompt | KL ratio to its teacher |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rounds:
        u, p = row["unprompted"], row["reprompted"]
        label = "base" if row["round"] == 0 else str(row["round"])
        ratio = "-" if row["kl_ratio_to_teacher"] is None else f"{row['kl_ratio_to_teacher']:.1%}"
        print(f"| {label} | {u['ahoy_rate']:.1%} | {p['ahoy_rate']:.1%} | {u['mc_kl_per_token']:.4f} ± "
              f"{u['mc_kl_stderr']:.4f} | {u['quality']:.3f} | {p['mc_kl_per_token']:.4f} | {ratio} |")
    print(f"\npursuit with the Ahoy rate as score (min improvement {args.min_improvement}): {stop}")
    print("\n| strength (round 1) | Ahoy rate | MC-KL | quality |\n| ---: | ---: | ---: | ---: |")
    for row in strengths:
        print(f"| {row['strength']:g} | {row['ahoy_rate']:.1%} | {row['mc_kl_per_token']:.4f} ± "
              f"{row['mc_kl_stderr']:.4f} | {row['quality']:.3f} |")
    print(f"\nwall: pursuit {pursuit_s / 60:.1f} min, strength table {strength_s / 60:.1f} min")


if __name__ == "__main__":
    main()
