"""Benchmark: the whole job in one run, every must-show of the speed work as a same-run ratio, one JSON.

Runs, one after the other on this machine (run it alone: every figure is a
ratio of two timings taken minutes apart in this run), each part in a fresh
process so one part's memory cannot slow the next:

    ceilings     the machine's bf16 and fp32 matmul ceilings (inside `pirate`)
    pirate       our bake against the reference loop on the pirate prompt (bench/reference_vs_ours.py):
                 training throughput, time to the reference's held-out KL, our share of the bf16 ceiling,
                 sampling against a plain generate() loop, and a profile of a few steps of each method
    tool         the same on a ~3,400-token tool instruction (bench/data/tool_instruction_long.txt): the
                 long-prompt training ratio, time to the reference's KL, and sampling against generate()
    fewshot      the same on a few-shot prompt of at least 1,000 tokens given as chat turns (16 examples of
                 BIG-bench 2-digit multiplication): throughput only
    drift        `drift-data`'s generator against the one of commit 9e1f645, same settings and seed
                 (bench/conversations.py)
    base_reuse   `forgetting` with the base model's scores reused from the store against scored again
                 (bench/base_reuse.py)
    contention   a training step idle and next to busy processes (bench/contention.py)
    bake         `lm-eval-baking bake` of the pirate prompt with the defaults, as a user runs it: wall
                 time by phase and the training's share of the bf16 ceiling

Writes bench/results/whole_job.json (each part's own JSON under "parts", and a
"must_show" table of ratio, target and met/missed) and prints that table.

    python bench/whole_job.py                          # everything (~50 min on an idle 2-core CPU)
    python bench/whole_job.py --parts pirate drift     # some parts; the other parts' stored results are kept
    python bench/whole_job.py --quick                  # the tiny random model where a part has --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lm_eval_baking.constants import THREADS_ENV

HERE = Path(__file__).parent
ROOT = HERE.parent
PIRATE = "You are a pirate. Start every answer with 'Ahoy!'"
TOOL_PROMPT = HERE / "data" / "tool_instruction_long.txt"
FEWSHOT_TASK = "baking_forgetting_arithmetic_2_digit_multiplication"


def part_commands(folder: Path, quick: bool) -> dict[str, list[str]]:
    """Each part's command line; `folder` receives their JSON files."""
    py = [sys.executable]
    q = ["--quick"] if quick else []
    return {
        "pirate": py + [str(HERE / "reference_vs_ours.py"), *q, "--sampling-questions", "30", "--eval-every", "8",
                        "--ablation-steps", "0", "--profile-steps", "2", "--json", str(folder / "pirate.json")],
        "tool": py + [str(HERE / "reference_vs_ours.py"), *q, "--prompt-file", str(TOOL_PROMPT),
                      "--train-questions", "32", "--heldout-questions", "16", "--max-new-tokens", "32",
                      "--eval-every", "2", "--sampling-questions", "8", "--sampling-samples", "2",
                      "--ablation-steps", "0", "--profile-steps", "0", "--json", str(folder / "tool.json")],
        "fewshot": py + [str(HERE / "reference_vs_ours.py"), *q, "--fewshot-task", FEWSHOT_TASK,
                         "--train-questions", "32", "--heldout-questions", "16", "--max-new-tokens", "8",
                         "--eval-every", "4", "--sampling-questions", "0", "--ablation-steps", "0",
                         "--profile-steps", "0", "--json", str(folder / "fewshot.json")],
        "drift": py + [str(HERE / "conversations.py"), "--generators", "before", "cached",
                       "--json", str(folder / "drift.json")],
        "base_reuse": py + [str(HERE / "base_reuse.py"), *q, "--limit", "20", "--json", str(folder / "base_reuse.json")],
        "contention": py + [str(HERE / "contention.py"), "--json", str(folder / "contention.json")],
        "bake": [sys.executable, "-m", "lm_eval_baking.cli", "bake", "--prompt", PIRATE,
                 "--output", str(folder / "pirate-bake"), "--quiet"],
    }


def run_part(name: str, command: list[str], folder: Path) -> dict:
    """Run one part as a child process; its wall time and its JSON (the bake's: its baking.json)."""
    print(f"\n=== {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    # Every part but contention (which compares thread settings) on one thread per core, as on an idle
    # machine, whatever core/threads.py would pick if something else ran meanwhile.
    env = dict(os.environ) if name == "contention" else {THREADS_ENV: str(os.cpu_count()), **os.environ}
    subprocess.run(command, check=True, cwd=ROOT, env=env)
    seconds = time.perf_counter() - start
    if name == "bake":
        result = json.loads((folder / "pirate-bake" / "baking.json").read_text())
        result = {"performance": result["performance"], "kl": result["kl"]}
    else:
        result = json.loads((folder / f"{name}.json").read_text())
    return {"wall_s": seconds, "result": result}


def must_show(parts: dict) -> list[dict]:
    """The issue's must-shows that the stored parts answer: value, target, met."""
    rows = []

    def row(what, value, target, met, note=""):
        rows.append({"what": what, "value": value, "target": target, "met": met, "note": note})

    pirate = parts.get("pirate", {}).get("result")
    if pirate:
        r = pirate["ratios"]
        row("pirate: training throughput, ours / reference", r["throughput_ours_over_reference"], ">= 3x",
            r["throughput_ours_over_reference"] >= 3)
        row("pirate: ours + top-64 captured / reference", r["throughput_ours_top_k_over_reference"], ">= 3x",
            r["throughput_ours_top_k_over_reference"] >= 3)
        if pirate.get("sampling"):
            row("pirate: sampling, ours / plain generate loop", pirate["sampling"]["speedup"], "(>= 5x before)",
                pirate["sampling"]["speedup"] >= 5)
    tool = parts.get("tool", {}).get("result")
    if tool:
        r = tool["ratios"]
        row("tool prompt: training throughput, ours / reference", r["throughput_ours_over_reference"], ">= 6x",
            r["throughput_ours_over_reference"] >= 6)
        t = r["time_to_target_ours_over_reference"]
        row("tool prompt: time to the reference's final held-out KL, ours / reference", t, "<= 1/6",
            t is not None and t <= 1 / 6, "" if t is not None else "ours never reached the reference's KL")
        if tool.get("sampling"):
            row("tool prompt: sampling, ours / plain generate loop", tool["sampling"]["speedup"], ">= 15x",
                tool["sampling"]["speedup"] >= 15)
    fewshot = parts.get("fewshot", {}).get("result")
    if fewshot:
        r = fewshot["ratios"]
        row(f"few-shot chat turns ({fewshot['prompt']['tokens']} tokens): training throughput, ours / reference",
            r["throughput_ours_over_reference"], ">= 6x", r["throughput_ours_over_reference"] >= 6)
    drift = parts.get("drift", {}).get("result")
    if drift and "speedup_vs_before" in drift["results"].get("cached", {}):
        cached = drift["results"]["cached"]
        row("drift-data: today's generator / 9e1f645's", cached["speedup_vs_before"], ">= 5x",
            cached["speedup_vs_before"] >= 5,
            f"{cached.get('messages_equal_to_before', float('nan')):.0%} of messages equal to before's")
    reuse = parts.get("base_reuse", {}).get("result")
    if reuse:
        row("forgetting of a second adapter: base reused / scored again", reuse["reused_over_again"], "< 1",
            reuse["reused_over_again"] < 1 and reuse["base_scores_equal"],
            f"base per-doc scores equal: {reuse['base_scores_equal']}")
    contention = parts.get("contention", {}).get("result")
    if contention:
        for name, r in contention["results"].items():
            row(f"training step next to a busy process / idle: {name}", r["ratio"], "<= 2.5x", r["ratio"] <= 2.5)
    bake = parts.get("bake", {}).get("result")
    if bake and pirate:
        performance = bake["performance"]
        flops = 6 * pirate["ours"]["n_params"] * performance["training_tokens_per_s"]
        # The machine's ceiling is the best probe of the run: a probe next to any other work reads low.
        ceiling = max(part["result"]["ceilings"]["bf16_gflops"] for part in parts.values()
                      if isinstance(part.get("result"), dict) and "ceilings" in part["result"])
        share = flops / 1e9 / ceiling
        row("default pirate bake: wall time (s), whole command", parts["bake"]["wall_s"], "", None,
            ", ".join(f"{k} {v:.0f} s" for k, v in performance["seconds"].items()))
        row("default pirate bake: training at a share of the bf16 ceiling", share, ">= 40%", share >= 0.40,
            f"6 x parameters x trained answer tokens/s ({flops / 1e9:.0f} GFLOP/s) over the run's best bf16 "
            f"matmul probe ({ceiling:.0f} GFLOP/s)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = list(part_commands(Path("."), False))
    parser.add_argument("--parts", nargs="+", default=names, choices=names)
    parser.add_argument("--quick", action="store_true", help="tiny-model smoke run of the parts that have one")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "whole_job.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    stored = json.loads(args.json.read_text()) if args.json.is_file() else {}
    parts = {k: v for k, v in stored.get("parts", {}).items() if k not in args.parts}
    folder = Path(tempfile.mkdtemp(prefix="whole-job-"))
    commands = part_commands(folder, args.quick)
    for name in args.parts:
        parts[name] = {**run_part(name, commands[name], folder), "command": " ".join(commands[name][1:]),
                       "commit": head_commit()}  # parts kept from an earlier run keep theirs
        write(args, parts)
    write(args, parts, show=True)


def head_commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=ROOT).stdout.strip()


def write(args, parts: dict, show: bool = False) -> None:
    report = {"commits": sorted({part.get("commit", "?") for part in parts.values()}), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              "quick": args.quick, "must_show": must_show(parts), "parts": parts}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    if show:
        print("\n| must show | value | target | met |\n| --- | ---: | --- | --- |")
        for r in report["must_show"]:
            value = f"{r['value']:.2f}" if isinstance(r["value"], float) else r["value"]
            met = {True: "yes", False: "**no**", None: ""}[r["met"]]
            print(f"| {r['what']} | {value} | {r['target']} | {met} {r['note']} |")


if __name__ == "__main__":
    main()
