"""One epoch of a multi-turn bake's training work, per turn (old) against by conversation (new), alternated.

    python bench/multi_turn_cost.py --conversations 4 --turns 8 --rounds 2

The conversations are synthetic (seeded random words, user turns of ~20 tokens and replies of ~45, about what
`--max-new-tokens 48` samples): the cost depends on their token counts only. Each round times, on the default
model and one shared LoRA, an epoch of forward + backward (teacher and student, no optimiser step) with
`--no-multi-turn-by-conversation` and with the default, in alternating order, and prints the per-epoch seconds
and the ratio. Under load (other processes on the cores) the absolute seconds mean little; the ratio of the
alternated pair is the figure.
"""

from __future__ import annotations

import argparse
import json
import random
import time

WORDS = ("the ship sails north across a grey sea while the crew sings of gold rum and distant islands "
         "every sailor knows the wind turns before the storm and the captain reads the stars at night").split()


def conversation(rng: random.Random, turns: int) -> list[dict]:
    def text(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."

    messages = []
    for _ in range(turns):
        messages += [{"role": "user", "content": text(16)}, {"role": "assistant", "content": text(40)}]
    return messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--refresh-as", default="system", choices=("system", "user", "off"))
    args = parser.parse_args()

    import torch

    from lm_eval_baking import BakeConfig
    from lm_eval_baking.core.models import default_model_dir, load_model
    from lm_eval_baking.training.baker import PromptBaker, attach_lora
    from lm_eval_baking.training.config import MultiTurnConfig
    from lm_eval_baking.training.multi_turn import turn_trajectories

    model, tokenizer = load_model(str(default_model_dir()))
    rng = random.Random(0)
    conversations = [conversation(rng, args.turns) for _ in range(args.conversations)]
    turns = turn_trajectories(conversations, range(1, args.turns + 1), tokenizer, temperature=1.0)
    refresh = dict(refresh=False) if args.refresh_as == "off" else dict(refresh_as=args.refresh_as)

    def config(by_conversation: bool) -> BakeConfig:
        settings = MultiTurnConfig(enabled=True, max_depth=args.turns, by_conversation=by_conversation, **refresh)
        return BakeConfig(prompt="You are a pirate. Start every answer with 'Ahoy!'", multi_turn=settings)

    model = attach_lora(model, config(True))
    bakers = {"per_turn": PromptBaker(model, tokenizer, config(False), progress=False),
              "by_conversation": PromptBaker(model, tokenizer, config(True), progress=False)}
    tokens = {name: _tokens_read(baker, turns) for name, baker in bakers.items()}

    def epoch(baker: PromptBaker) -> float:
        start = time.perf_counter()
        for batch in baker.batches(turns, 1):
            baker.compute_loss(batch).backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    model.train()
    epoch(bakers["by_conversation"])  # warm-up: the prompt's cache, the bf16 weight copies, allocations
    epoch(bakers["per_turn"])
    seconds: dict[str, list[float]] = {name: [] for name in bakers}
    for index in range(args.rounds):
        order = list(bakers) if index % 2 == 0 else list(bakers)[::-1]
        for name in order:
            seconds[name].append(epoch(bakers[name]))
            print(f"round {index + 1} {name}: {seconds[name][-1]:.1f} s", flush=True)
    ratio = [old / new for old, new in zip(seconds["per_turn"], seconds["by_conversation"])]
    print(json.dumps({"conversations": args.conversations, "turns": args.turns, "refresh": args.refresh_as,
                      "answer_tokens": sum(len(t.answer_ids) for t in turns), "tokens_read_per_epoch": tokens,
                      "seconds_per_epoch": seconds, "ratio_per_round": ratio,
                      "threads": torch.get_num_threads()}, indent=1))


def _tokens_read(baker, turns) -> dict[str, int]:
    """Tokens an epoch's forwards read (padding included), student and teacher, the prompt's cache not counted."""
    from lm_eval_baking.core.shared_history import common_length

    student = teacher = 0
    prompt = len(baker.bake_step.teacher_prefix or [])
    for batch in baker.batches(turns, 1):
        ids = baker.student_inputs(batch)[0]
        student += ids.numel()
        sequences = [baker.prefix(t, True) + t.answer_ids for t in batch]
        if baker.walks_teacher:
            held: list[int] = []
            for sequence in sorted(sequences):
                teacher += len(sequence) - max(common_length(held, sequence), prompt)
                held = sequence
        else:
            teacher += len(sequences) * (max(map(len, sequences)) - prompt)
    return {"student": student, "teacher": teacher}


if __name__ == "__main__":
    main()
