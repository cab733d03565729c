"""A long system prompt read once: the shared-prefix KV cache (core/prefix_cache.py) against reading it whole.

Same run, same model (the default, fp32 weights), same 16 questions with
fixed 32-token answers, each pass timed old/new alternately and the best of
`--repeats` kept. Prints and writes bench/results/long_prompts.json:
- teacher log-probs (held-out scoring): seconds old/new and the largest log-prob difference;
- held-out KL (token_level_kl, fp32, full vocabulary): seconds old/new and the two KLs;
- one training step (loss + backward, bf16 autocast, batch 8): seconds old/new and the two losses;
- sampling 16 answers of 32 tokens (temperature 1, fp32): seconds with generate() reading each row's prompt
  against the cached prompt, and whether the same seed drew the same answers.
`--sections` reruns some of them; the others' stored figures are kept.

    python bench/long_prompts.py [--prompt-file bench/data/tool_instruction.txt] [--sections sampling]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch

from lm_eval_baking import BakeConfig, PromptBaker
from lm_eval_baking.core.chat import encode_like_lm_eval
from lm_eval_baking.core.models import load_model
from lm_eval_baking.core.prefix_cache import SharedPrefix, teacher_prefix
from lm_eval_baking.core.prompts import as_bake_prompt
from lm_eval_baking.core.questions import load_questions
from lm_eval_baking.core.kl import token_level_kl
from lm_eval_baking.core.sampling import Trajectory, sample_trajectories
from lm_eval_baking.core.scoring import continuation_logprobs
from lm_eval_baking.training.baker import attach_lora

HERE = Path(__file__).parent
SECTIONS = ("teacher_logprobs", "heldout_kl", "training_step", "sampling")
ANSWER = "Thank you for your message. I have looked at your parcel and it is on its way; it should arrive soon."


class read_whole:
    """Within the block no shared prefix is found, so every context is read whole: the code before the cache."""

    def __enter__(self):
        self.of = SharedPrefix.__dict__["of"]
        SharedPrefix.of = classmethod(lambda *_, **__: None)

    def __exit__(self, *exc):
        SharedPrefix.of = self.of


def best_of(repeats: int, old, new) -> tuple[float, float, object, object]:
    """Best wall time of old() and new(), run alternately, and each one's last result."""
    times = {"old": [], "new": []}
    results = {}
    for _ in range(repeats):
        for name, run in (("old", old), ("new", new)):
            start = time.perf_counter()
            results[name] = run()
            times[name].append(time.perf_counter() - start)
    return min(times["old"]), min(times["new"]), results["old"], results["new"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-file", type=Path, default=HERE / "data" / "tool_instruction.txt")
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    args = parser.parse_args()
    stored = HERE / "results" / "long_prompts.json"
    kept = json.loads(stored.read_text()) if stored.is_file() else {}
    torch.manual_seed(0)
    prompt_text = args.prompt_file.read_text()
    model, tokenizer = load_model("default")
    prompt = as_bake_prompt(prompt_text, tokenizer)
    prefix = teacher_prefix(prompt, tokenizer)
    answer_ids = tokenizer.encode(ANSWER, add_special_tokens=False)[:32]
    questions = [q.text for q in load_questions()[:args.questions]]
    heldout = [Trajectory(question=q, answer=tokenizer.decode(answer_ids), answer_ids=answer_ids) for q in questions]
    pairs = [(prompt.context(tokenizer, q), tokenizer.decode(answer_ids)) for q in questions]
    out = {"command": "python bench/long_prompts.py", "prompt_file": str(args.prompt_file.relative_to(HERE.parent)),
           "prompt_tokens_with_template": len(encode_like_lm_eval(tokenizer, prompt.context(tokenizer, questions[0]))),
           "shared_prefix_tokens": len(prefix), "questions": len(questions), "answer_tokens": len(answer_ids),
           "threads": torch.get_num_threads()}

    out.update({name: kept[name] for name in SECTIONS if name in kept and name not in args.sections})

    def scoring(with_prefix):
        def run():
            with contextlib.nullcontext() if with_prefix else read_whole():
                return continuation_logprobs(model, tokenizer, pairs, batch_size=16, progress=False)
        return run
    if "teacher_logprobs" in args.sections:
        old_s, new_s, old_r, new_r = best_of(args.repeats, scoring(False), scoring(True))
        out["teacher_logprobs"] = {"old_s": old_s, "new_s": new_s, "speedup": old_s / new_s,
                               "max_abs_logprob_difference": max(abs(a[0] - b[0]) for a, b in zip(old_r, new_r))}

    config = BakeConfig(prompt=prompt_text, model="default", batch_size=8, questions=None)
    peft_model = attach_lora(model, config)
    def heldout_kl(with_prefix):
        def run():
            with contextlib.nullcontext() if with_prefix else read_whole():
                return token_level_kl(peft_model, tokenizer, heldout, prompt_text, batch_size=16,
                                      progress=False).per_token
        return run
    if "heldout_kl" in args.sections:
        old_s, new_s, old_r, new_r = best_of(args.repeats, heldout_kl(False), heldout_kl(True))
        out["heldout_kl"] = {"old_s": old_s, "new_s": new_s, "speedup": old_s / new_s, "kl_old": old_r, "kl_new": new_r}

    baker = PromptBaker(peft_model, tokenizer, config, progress=False)
    batch = heldout[:8]

    def step(with_prefix):
        def run():
            baker.step_module.teacher_prefix = prefix if with_prefix else None
            peft_model.zero_grad(set_to_none=True)
            loss = baker.compute_loss(batch)
            loss.backward()
            return loss.item()
        return run
    if "training_step" in args.sections:
        old_s, new_s, old_r, new_r = best_of(args.repeats, step(False), step(True))
        out["training_step"] = {"old_s": old_s, "new_s": new_s, "speedup": old_s / new_s, "loss_old": old_r,
                                "loss_new": new_r}

    def sampling(with_prefix):
        def run():
            with contextlib.nullcontext() if with_prefix else read_whole():
                return [t.answer_ids for t in sample_trajectories(
                    model, tokenizer, load_questions()[:args.questions], system_prompt=prompt_text,
                    max_new_tokens=32, temperature=1.0, seed=0, batch_size=16, progress=False)]
        return run
    if "sampling" in args.sections:
        old_s, new_s, old_r, new_r = best_of(args.repeats, sampling(False), sampling(True))
        out["sampling"] = {"old_s": old_s, "new_s": new_s, "speedup": old_s / new_s,
                           "same_answers": old_r == new_r,
                           "answers_equal": sum(a == b for a, b in zip(old_r, new_r)), "answers": len(old_r)}
    stored.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
