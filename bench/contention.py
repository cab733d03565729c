"""Benchmark: a training step alone and next to one busy process, under several thread settings.

A bake's training step (the default model with the default LoRA, bf16
autocast, batch 8 of 64-token sequences, forward, backward, AdamW) is timed
in a fresh process per setting: once on the idle machine, and next to each
kind of neighbour (NEIGHBOURS): one that keeps the CPUs busy as a niced test
run does (`nice -n 10`, a matmul loop on torch's default threads), and one
that keeps one core busy at normal priority, as a second job on one thread
does. The ratio busy / idle is what the neighbour costs; a fair share on 2
cores is about 2x.

    python bench/contention.py            # writes bench/results/contention.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from lm_eval_baking.core.threads import PINNING_ENV

SETTINGS = {
    "default (one thread per core the others leave free, core/threads.py)": {},
    "one thread per core (torch's own default)": {"OMP_NUM_THREADS": str(os.cpu_count())},
    "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"},
}
NEIGHBOUR = "import torch\na = torch.randn(1024, 1024)\nwhile True:\n    a @ a\n"
# Who the neighbour is: a niced test run on torch's default threads, or a second job of ours that another
# user started without nice on one thread (a test run with OMP_NUM_THREADS=1, a helper's bake).
NEIGHBOURS = {
    "niced, torch's threads": (["nice", "-n", "10"], {}),
    "not niced, one thread": ([], {"OMP_NUM_THREADS": "1"}),
}
STEPS = 4


def step_times() -> list[float]:
    """Seconds per training step, after one warm-up step (run in the worker process)."""
    import torch

    from lm_eval_baking import BakeConfig
    from lm_eval_baking.core import models
    from lm_eval_baking.training.baker import attach_lora

    config = BakeConfig(prompt="x")
    model, _ = models.load_model(models.resolve_model(config.model), device="cpu")
    model = attach_lora(model, config)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    torch.manual_seed(0)
    ids = torch.randint(100, 10000, (8, 64))
    times = []
    for _ in range(STEPS + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
        times.append(time.perf_counter() - start)
    return times[1:]


def timed(env: dict, neighbour_kind: str | None) -> dict:
    neighbour = None
    if neighbour_kind:
        prefix, neighbour_env = NEIGHBOURS[neighbour_kind]
        neighbour = subprocess.Popen([*prefix, sys.executable, "-c", NEIGHBOUR], env={**os.environ, **neighbour_env})
    try:
        time.sleep(2 if neighbour else 0)
        clean = {k: v for k, v in os.environ.items() if k not in PINNING_ENV}  # each setting pins its own
        out = subprocess.run([sys.executable, __file__, "--worker"], env={**clean, **env}, check=True,
                             capture_output=True, text=True).stdout
    finally:
        if neighbour:
            neighbour.kill()
            neighbour.wait()
    times = json.loads(out.strip().splitlines()[-1])
    return {"median_s": statistics.median(times), "steps_s": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "contention.json")
    parser.add_argument("--settings", type=int, nargs="+", default=list(range(len(SETTINGS))),
                        help="which thread settings, by position (0: the default)")
    args = parser.parse_args()
    results = {}
    for index, (name, env) in enumerate(SETTINGS.items()):
        if index not in args.settings:
            continue
        idle = timed(env, None)
        for kind in NEIGHBOURS:
            busy = timed(env, kind)
            key = f"{name}; neighbour {kind}"
            results[key] = {"env": env, "neighbour": kind, "idle": idle, "busy": busy,
                            "ratio": busy["median_s"] / idle["median_s"]}
            print(f"{key}: idle {idle['median_s']:.2f} s, busy {busy['median_s']:.2f} s, "
                  f"ratio {results[key]['ratio']:.2f}x", flush=True)
    fastest_idle = min(r["idle"]["median_s"] for r in results.values())
    print("| setting | neighbour | step, idle | step, next to the neighbour | busy / idle | idle vs the fastest idle |\n"
          "| --- | --- | ---: | ---: | ---: | ---: |")
    for r in results.values():
        name = next(n for n, e in SETTINGS.items() if e == r["env"])
        print(f"| {name} | {r['neighbour']} | {r['idle']['median_s']:.2f} s | {r['busy']['median_s']:.2f} s "
              f"| {r['ratio']:.2f}x | {r['idle']['median_s'] / fastest_idle:.2f}x |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"steps": STEPS, "results": results}, indent=1))


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        print(json.dumps(step_times()))
    else:
        main()
