"""Alternated A/B timing of one training-step lever against today's step, in one process, on the same batches.

Two bakers start from the same seeded LoRA on the same model and take the
same batches; their steps alternate (A, B, B, A, A, B, ...) so that load on a
shared machine falls on both alike, and the ratio of their summed step times
is the lever's speed-up. The losses of both are printed, so a lever that
should not change the numbers can be seen not to.

    OMP_NUM_THREADS=1 python bench/step_levers.py --lever weight_copy --steps 6
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import time
from dataclasses import replace
from pathlib import Path

import torch

from lm_eval_baking import BakeConfig, PromptBaker
from lm_eval_baking.core.batching import autocast
from lm_eval_baking.core.models import load_model
from lm_eval_baking.core.questions import load_questions, split_questions
from lm_eval_baking.core.sampling import sample_trajectories
from lm_eval_baking.training.baker import attach_lora

PIRATE = "You are a pirate. Start every answer with 'Ahoy!'"


class _FusedKL(torch.autograd.Function):
    """Trial of lever 2: today's forward ops (the same value), one fused backward: (softmax(s) - p) * g."""

    @staticmethod
    def forward(ctx, teacher_logits, student_logits):
        teacher_logp = torch.log_softmax(teacher_logits.float(), dim=-1)
        student_logp = torch.log_softmax(student_logits.float(), dim=-1)
        p = teacher_logp.exp()
        ctx.save_for_backward(p, student_logp)
        ctx.dtype = student_logits.dtype
        return (p * (teacher_logp - student_logp)).sum()

    @staticmethod
    def backward(ctx, grad):
        p, student_logp = ctx.saved_tensors
        return None, ((student_logp.exp_() - p) * grad).to(ctx.dtype)


@contextlib.contextmanager
def fused_kl():
    from lm_eval_baking.training import baker as module

    original = module.prompt_baking_loss
    module.prompt_baking_loss = lambda teacher, student, top_k=None: (
        _FusedKL.apply(teacher, student) if not isinstance(teacher, tuple) and top_k is None
        else original(teacher, student, top_k))
    try:
        yield
    finally:
        module.prompt_baking_loss = original


@contextlib.contextmanager
def math_attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield

# lever name -> (settings of the old step, settings of the new step, context the new step runs in)
LEVERS = {
    "weight_copy": ({"bf16_weight_copy": "off"}, {"bf16_weight_copy": "on"}, contextlib.nullcontext),
    "fused_kl": ({}, {}, fused_kl),
    "math_attention": ({}, {}, math_attention),
}


def trajectories(cache: Path, n: int, config: BakeConfig):
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    model, tokenizer = load_model(config.model)
    questions, _ = split_questions(load_questions("builtin"), config.heldout_fraction, config.seed)
    with autocast(model.device, config.autocast_dtype):
        train = sample_trajectories(model, tokenizer, questions[:n], system_prompt=PIRATE, max_new_tokens=48,
                                    batch_size=64, seed=0, capture_top_k=64)
    cache.write_bytes(pickle.dumps(train))
    return train


def compile_probe(vocab: int = 49152, positions: int = 300) -> None:
    """torch.compile (CPU inductor, dynamic shapes) of the loss alone: compile time, then eager against
    compiled on the same random logits, alternated, over a few position counts."""
    from lm_eval_baking.training.baker import prompt_baking_loss

    torch.manual_seed(0)

    def run(loss_fn, n):
        teacher = torch.randn(n, vocab, dtype=torch.bfloat16) * 3
        student = (torch.randn(n, vocab) * 3).to(torch.bfloat16).requires_grad_()
        start = time.perf_counter()
        loss_fn(teacher, student).backward()
        return time.perf_counter() - start

    compiled = torch.compile(prompt_baking_loss, dynamic=True)
    first = run(compiled, positions)
    print(f"first call (compiles): {first:.1f} s; another shape: {run(compiled, positions + 17):.1f} s")
    seconds = {"eager": 0.0, "compiled": 0.0}
    for index, n in enumerate([positions + d for d in (10, -10, 30, 5, 20, 0)]):
        pair = [("eager", prompt_baking_loss), ("compiled", compiled)]
        for name, fn in pair if index % 2 == 0 else pair[::-1]:
            seconds[name] += run(fn, n)
    print(f"eager {seconds['eager']:.2f} s, compiled {seconds['compiled']:.2f} s, "
          f"speed-up {seconds['eager'] / seconds['compiled']:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lever", choices=sorted(LEVERS))
    parser.add_argument("--compile-probe", action="store_true", help="time torch.compile of the loss alone, then stop")
    parser.add_argument("--steps", type=int, default=6, help="timed steps of each side after one warm-up each")
    parser.add_argument("--base", default="{}", help="extra BakeConfig settings of both sides, as a Python dict")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/step_levers_train.pkl"))
    parser.add_argument("--heldout", type=Path, default=None,
                        help="a pickled list of held-out trajectories: also print both adapters' fp32 held-out KL")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.compile_probe:
        return compile_probe()
    if args.lever is None:
        parser.error("pass --lever NAME or --compile-probe")
    base = replace(BakeConfig(prompt=PIRATE), **eval(args.base))
    train = trajectories(args.cache, 8 * (args.steps + 1), base)
    old_settings, new_settings, new_context = LEVERS[args.lever]
    sides = {}
    for name, settings, context in (("old", old_settings, contextlib.nullcontext), ("new", new_settings, new_context)):
        config = replace(base, **settings)
        model, tokenizer = load_model(config.model)
        baker = PromptBaker(attach_lora(model, config), tokenizer, config, progress=False)
        baker.model.train()
        sides[name] = {"baker": baker, "context": context, "seconds": 0.0, "losses": []}
    batches = sides["old"]["baker"].batches(train, 1)[:args.steps + 1]

    def step(side, batch):
        baker = side["baker"]
        start = time.perf_counter()
        with side["context"]():
            loss = baker.compute_loss(batch)
            loss.backward()
        baker.optimizer.step()
        baker.optimizer.zero_grad(set_to_none=True)
        side["losses"].append(loss.item())
        return time.perf_counter() - start

    for index, batch in enumerate(batches):
        order = ("old", "new") if index % 2 == 0 else ("new", "old")
        for name in order:
            seconds = step(sides[name], batch)
            if index:  # the first step of each side is a warm-up
                sides[name]["seconds"] += seconds
    old, new = sides["old"], sides["new"]
    print(f"lever {args.lever}: {args.steps} steps each, old {old['seconds']:.2f} s, new {new['seconds']:.2f} s, "
          f"speed-up old/new = {old['seconds'] / new['seconds']:.3f}x")
    print("losses old:", " ".join(f"{x:.9g}" for x in old["losses"]))
    print("losses new:", " ".join(f"{x:.9g}" for x in new["losses"]))
    print("max |loss difference|:", max(abs(a - b) for a, b in zip(old["losses"], new["losses"])))
    if args.heldout:
        heldout = pickle.loads(args.heldout.read_bytes())
        for name, side in sides.items():
            kl = side["baker"].heldout_kl(heldout)
            print(f"held-out KL per token, {name}: {kl.per_token:.5f} ± {kl.per_token_stderr:.5f} "
                  f"({kl.n_sequences} answers)")


if __name__ == "__main__":
    main()
