"""Benchmark: drift conversations, today's generator against the one before it, in one run.

The generator of commit BEFORE re-read every view at every turn: the agent's
whole history and the simulated user's. Today the agents keep one KV cache
across turns (core.kv_batch) and the simulated user reads its last
`user_context_turns` agent turns; each decode step writes the KV cache in
place (core.kv_batch.GrowingLayer) and runs the linears on bf16 weights
packed once (core.packed_weights), both the same numbers as before. Three generators, the same settings and seed,
the default model in the bake's bf16 autocast, as `drift-data` runs them:

    before          commit BEFORE's code, loaded from git
    cached, whole   today's code with user_context_turns=0 (the user reads everything, as before)
    cached          today's default (user_context_turns=2)

Per generator: wall time, how many messages equal BEFORE's, the share of the
simulated user's messages that ask a question, and the prompted agent's
persona score at turns <= 5 and >= 25 (that the conversation still measures
drift). Writes bench/results/conversations.json.

    python bench/conversations.py                      # the demo's drift settings: 5 x 30 turns of <= 24 tokens
    python bench/conversations.py --max-new-tokens 40  # drift-data's defaults (about twice as long)
    python bench/conversations.py --turns 4 --skip-before  # a quick check of today's generators
    python bench/conversations.py --persona-check      # 20 conversations x 8 turns, seed 7: does the agent's
                                                       # persona score move? (paired by conversation, with CI)
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lm_eval_baking.core import models
from lm_eval_baking.core.stats import compare_paired
from lm_eval_baking.evals.config import ConversationSettings
from lm_eval_baking.evals.conversations import generate_conversations
from lm_eval_baking.evals.personas import get_persona

BEFORE = "9e1f645"
GENERATORS = ("before", "cached", "cached, whole")  # the last commit whose conversations re-read every view at every turn


def generator_before():
    """commit BEFORE's generate_conversations, imported as a module of the package (its relative imports hold)."""
    source = subprocess.run(["git", "show", f"{BEFORE}:lm_eval_baking/evals/conversations.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "conversations_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("lm_eval_baking.evals.conversations_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.generate_conversations


def summary(conversations, persona, reference=None) -> dict:
    users = [m["content"] for c in conversations for m in c[2::2]]
    agents = [[m["content"] for m in c[1::2]] for c in conversations]
    early = [persona.score(a) for turns in agents for a in turns[:5]]
    late = [persona.score(a) for turns in agents for a in turns[24:]]
    out = {"user_asks_a_question": sum("?" in u for u in users) / len(users),
           "agent_persona_turns_1_5": sum(early) / len(early),
           "agent_persona_turns_25_on": sum(late) / len(late) if late else None}
    if reference is not None:
        pairs = [(m, r) for c, rc in zip(conversations, reference) for m, r in zip(c, rc)]
        out["messages_equal_to_before"] = sum(m == r for m, r in pairs) / len(pairs)
        first = [next((i for i, (m, r) in enumerate(zip(c, rc)) if m != r), None)
                 for c, rc in zip(conversations, reference)]
        out["first_differing_message"] = first
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--persona", default="spanish")
    parser.add_argument("--conversations", type=int, default=5)
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--skip-before", action="store_true", help="time today's generators only")
    parser.add_argument("--generators", nargs="+", choices=GENERATORS, default=list(GENERATORS),
                        help="which generators to run (before is needed for the ratios)")
    parser.add_argument("--json", type=Path, help="where to write the results (default: bench/results/...)")
    parser.add_argument("--persona-check", action="store_true",
                        help="20 conversations x 8 turns, seed 7: each generator's per-conversation persona score, "
                             "compared with BEFORE's paired by conversation")
    args = parser.parse_args()
    if args.persona_check:
        args.conversations, args.turns = 20, 8
    model, tokenizer = models.load_model(models.resolve_model("default"), device="cpu")
    persona = get_persona(args.persona)
    settings = ConversationSettings(turns=args.turns, max_new_tokens=args.max_new_tokens,
                                    conversations=args.conversations, seed=7 if args.persona_check else 0)
    prompts, ids = [persona.system_prompt] * args.conversations, list(range(args.conversations))
    # "before" first: the paired comparison below reads its scores.
    generators = {}
    if not args.skip_before and "before" in args.generators:
        generators["before"] = (generator_before(), dataclasses.replace(settings, user_context_turns=0))
    generators |= {"cached": (generate_conversations, settings),
                   "cached, whole": (generate_conversations, dataclasses.replace(settings, user_context_turns=0))}
    generators = {name: run for name, run in generators.items() if name in args.generators}
    results, outputs = {}, {}
    for name, (generate, used) in generators.items():
        start = time.perf_counter()
        outputs[name] = generate(model, tokenizer, prompts, used, conversation_ids=ids,
                                 autocast_dtype=torch.bfloat16, progress=True)
        results[name] = {"seconds": time.perf_counter() - start, "user_context_turns": used.user_context_turns}
        print(f"{name}: {results[name]['seconds']:.1f} s", flush=True)
    for name in results:
        results[name].update(summary(outputs[name], persona, outputs.get("before")))
        per_conversation = [sum(persona.score(m["content"]) for m in c[1::2]) / args.turns for c in outputs[name]]
        results[name]["agent_persona_per_conversation"] = per_conversation
        if "before" in results and name != "before":
            c = compare_paired(results["before"]["agent_persona_per_conversation"], per_conversation)
            results[name]["agent_persona_minus_before"] = {"difference": c.difference, "p_value": c.p_value,
                                                           "ci": [c.difference_ci.low, c.difference_ci.high]}
            print(f"{name}: agent persona score minus before's, paired by conversation: {c.difference:+.3f} "
                  f"[{c.difference_ci.low:+.3f}, {c.difference_ci.high:+.3f}]")
        if "before" in results:
            results[name]["speedup_vs_before"] = results["before"]["seconds"] / results[name]["seconds"]
    print("| generator | seconds | vs before | messages equal to before | user asks a question "
          "| agent persona, turns 1-5 | turns 25+ |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        print(f"| {name} | {r['seconds']:.1f} | {r.get('speedup_vs_before', float('nan')):.2f}x "
              f"| {r.get('messages_equal_to_before', float('nan')):.0%} | {r['user_asks_a_question']:.0%} "
              f"| {r['agent_persona_turns_1_5']:.3f} | {r['agent_persona_turns_25_on'] or float('nan'):.3f} |")
    out = args.json or Path(f"bench/results/conversations{'-persona-check' if args.persona_check else ''}.json")
    out.write_text(json.dumps({"settings": dataclasses.asdict(settings), "persona": args.persona,
                               "before": BEFORE, "results": results, "conversations": outputs},
                              indent=1, ensure_ascii=False))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
