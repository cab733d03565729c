"""Benchmark: is the teacher's top-k, captured while sampling, good enough to be the default? Seeds x prompts.

For each prompt and seed, one set of training and held-out answers is sampled
from the prompted default model (the bake's settings: 256 training answers of
at most 48 tokens at T=1, 64 held-out answers at T=1, bf16 autocast), with the
teacher's top-K_MAX log-probs captured while sampling. Then three adapters
are trained on exactly those answers, same LoRA seed and batch order:

    full        the default: the teacher run at every step, full-vocabulary KL
    top-64      the captured top-64 plus one bucket for the rest (no teacher forward in training)
    top-256     the same with k = 256

Each is scored by the same exact fp32 held-out KL over the FULL vocabulary on
the same held-out answers (the number a bake reports and `baking_mckl`
estimates). Top-k plus remainder is a lower bound of the full KL, so a bake
that minimises it may leave KL outside the top-k: the held-out full KL shows
whether it does.

Printed and written (bench/results/topk_default.json): per prompt and seed the
three held-out KLs and training seconds; for each top-k variant against full,
the paired relative difference of held-out KL with a 95% CI, (a) pooled over
all held-out answers with the training run as the resampled cluster (runs
differ by their seed, the larger noise), and (b) per run.

    python bench/topk_default.py                      # 2 prompts x 3 seeds (~45 min idle on 2 cores)
    python bench/topk_default.py --quick              # a tiny random model: a smoke run
    python bench/topk_default.py --prompts spanish --json B.json   # one prompt (run two side by side), then
    python bench/topk_default.py --combine A.json B.json            # one table of both
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from lm_eval_baking import BakeConfig, PromptBaker
from lm_eval_baking.core import kl as kl_module
from lm_eval_baking.core.batching import autocast
from lm_eval_baking.core.models import load_model, resolve_model
from lm_eval_baking.core.questions import load_questions, split_questions
from lm_eval_baking.core.sampling import sample_trajectories
from lm_eval_baking.core.stats import paired_cluster_comparison
from lm_eval_baking.evals.personas import get_persona
from lm_eval_baking.training.baker import attach_lora

HERE = Path(__file__).parent
PROMPTS = {"pirate": get_persona("pirate").system_prompt, "spanish": get_persona("spanish").system_prompt}
K_VALUES = (64, 256)
K_MAX = max(K_VALUES)


@contextmanager
def per_sequence_kls():
    """Collects the per-answer KL rates (KL / tokens) token_level_kl computes, in the order of its answers."""
    collected: list[list[float]] = []
    original = kl_module.KLEstimate.from_sequences

    def recording(cls, sums, counts):
        collected.append([s / c for s, c in zip(sums, counts)])
        return original.__func__(cls, sums, counts)

    kl_module.KLEstimate.from_sequences = classmethod(recording)
    try:
        yield collected
    finally:
        kl_module.KLEstimate.from_sequences = original


def with_top_k(trajectories, k: int):
    """Copies of `trajectories` whose captured teacher keeps only its k largest log-probs (topk() sorts them)."""
    return [replace(t, teacher_top_k=tuple(part[:, :k].contiguous() for part in t.teacher_top_k))
            for t in trajectories]


def train_one(model_path: str, config: BakeConfig, train, heldout) -> dict:
    """A fresh LoRA trained one epoch on `train` with `config`; its exact fp32 held-out KL per answer."""
    model, tokenizer = load_model(model_path)
    model = attach_lora(model, config)
    baker = PromptBaker(model, tokenizer, config, progress=False)
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        baker.train_epoch(train, epoch)
    seconds = time.perf_counter() - start
    model.eval()
    with per_sequence_kls() as rates:
        estimate = baker.heldout_kl(heldout)
    del baker, model
    gc.collect()
    return {"train_s": seconds, "heldout_kl": estimate.per_token, "heldout_kl_stderr": estimate.per_token_stderr,
            "per_answer": rates[-1]}


def tiny_model(directory: Path) -> str:
    from reference_vs_ours import tiny_model as make  # the same tiny model as the other benches' --quick

    return make(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--prompts", nargs="+", default=list(PROMPTS), choices=list(PROMPTS))
    parser.add_argument("--quick", action="store_true", help="a tiny random model, 16 + 8 answers: a smoke run")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "topk_default.json")
    parser.add_argument("--combine", type=Path, nargs="+", metavar="JSON",
                        help="write --json from the runs of these earlier results (e.g. prompts run side by side)")
    args = parser.parse_args()
    if args.combine:
        runs = [run for path in args.combine for run in json.loads(path.read_text())["runs"]]
        args.json.write_text(json.dumps(report(runs, args), indent=2) + "\n")
        print_tables(report(runs, args))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_path = tiny_model(Path(tempfile.mkdtemp(prefix="bench-tiny-"))) if args.quick else resolve_model("default")
    n_train, n_heldout, max_new = (16, 8, 8) if args.quick else (256, 64, 48)
    variants = {"full": {}, **{f"top-{k}": {"top_k": k, "cache_teacher": True} for k in K_VALUES}}
    runs = []
    for prompt_name in args.prompts:
        for seed in args.seeds:
            config = BakeConfig(prompt=PROMPTS[prompt_name], model=model_path, max_new_tokens=max_new, epochs=1,
                                seed=seed)
            train_q, heldout_q = split_questions(load_questions("builtin"), config.heldout_fraction, seed)
            model, tokenizer = load_model(model_path)
            start = time.perf_counter()
            with autocast(model.device, config.autocast_dtype):  # as bake samples: bf16 autocast, top-k captured
                train = sample_trajectories(model, tokenizer, train_q[:n_train], system_prompt=config.prompt,
                                            max_new_tokens=max_new, batch_size=config.generation_batch_size,
                                            seed=seed, capture_top_k=K_MAX, desc=f"{prompt_name} seed {seed}: train")
                heldout = sample_trajectories(model, tokenizer, heldout_q[:n_heldout], system_prompt=config.prompt,
                                              max_new_tokens=max_new, batch_size=config.generation_batch_size,
                                              seed=seed + 1, desc=f"{prompt_name} seed {seed}: held-out")
            sampling_s = time.perf_counter() - start
            del model
            gc.collect()
            run = {"prompt": prompt_name, "seed": seed, "sampling_s": sampling_s, "train_answers": len(train),
                   "heldout_answers": len(heldout), "variants": {}}
            for name, change in variants.items():
                data = with_top_k(train, change["top_k"]) if change else train
                run["variants"][name] = train_one(model_path, replace(config, **change), data, heldout)
                print(f"{prompt_name} seed {seed} {name}: held-out KL {run['variants'][name]['heldout_kl']:.4f} "
                      f"({run['variants'][name]['train_s']:.0f} s training)", flush=True)
            runs.append(run)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report(runs, args), indent=2) + "\n")  # kept after every run
    print_tables(report(runs, args))


def report(runs: list[dict], args) -> dict:
    """The runs and, per top-k variant, its paired comparison with full-vocabulary training."""
    comparisons = {}
    for name in (f"top-{k}" for k in K_VALUES):
        full, other, clusters = [], [], []
        per_run = []
        for index, run in enumerate(runs):
            a, b = run["variants"]["full"]["per_answer"], run["variants"][name]["per_answer"]
            full += a
            other += b
            clusters += [index] * len(a)
            one = paired_cluster_comparison(a, b, list(range(len(a))))
            per_run.append({"prompt": run["prompt"], "seed": run["seed"], "relative": one.relative_change,
                            "relative_ci": [one.relative_ci.low, one.relative_ci.high]})
        pooled = paired_cluster_comparison(full, other, clusters)
        comparisons[name] = {"pooled_relative": pooled.relative_change, "pooled_relative_ci": [pooled.relative_ci.low, pooled.relative_ci.high],
                             "pooled_full_kl": pooled.base_mean, "pooled_variant_kl": pooled.other_mean,
                             "clusters": len(runs), "per_run": per_run}
    return {"command": "python bench/topk_default.py" + (" --quick" if args.quick else ""),
            "threads": torch.get_num_threads(), "k_values": list(K_VALUES), "runs": runs,
            "comparisons": comparisons}


def print_tables(r: dict) -> None:
    names = list(r["runs"][0]["variants"]) if r["runs"] else []
    print("\n| prompt | seed | " + " | ".join(f"{n}: held-out KL (train s)" for n in names) + " |")
    print("| --- | ---: |" + " ---: |" * len(names))
    for run in r["runs"]:
        cells = [f"{run['variants'][n]['heldout_kl']:.4f} ({run['variants'][n]['train_s']:.0f})" for n in names]
        print(f"| {run['prompt']} | {run['seed']} | " + " | ".join(cells) + " |")
    for name, c in r["comparisons"].items():
        low, high = c["pooled_relative_ci"]
        print(f"\n{name} vs full, held-out full KL, paired over {c['clusters']} runs: "
              f"{c['pooled_relative']:+.1%} [{low:+.1%}, {high:+.1%}]")


if __name__ == "__main__":
    main()
