"""Screen generative BIG-bench tasks for a few-shot gain on a model: 0-shot vs k-shot, doc by doc.

    flock /tmp/lm-eval-baking-heavy.lock python bench/screen_fewshot_tasks.py --docs 30 \
        --output bench/results/screen_fewshot.json

Each candidate runs through lm_eval in-process with the baking_fewshot template (chat turns:
--apply_chat_template --fewshot_as_multiturn, greedy, first line, exact match) on the first
`--docs` test docs, at 0 shots and at `--shots`. The gain is paired doc by doc
(core.stats.compare_paired): a task is a candidate when its CI excludes zero.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "tasks" / "baking_fewshot" / "_bigbench_gen_template_yaml"
CANDIDATES = [
    "arithmetic/1_digit_addition", "arithmetic/1_digit_multiplication", "arithmetic/2_digit_addition",
    "arithmetic/2_digit_subtraction", "linguistic_mappings/plural_json", "linguistic_mappings/past_tense_json",
    "linguistic_mappings/sentence_negation_json", "unnatural_in_context_learning/identity",
    "periodic_elements/subtask_0", "word_sorting",
]
# Screened out before running, for their cost on a 2-core CPU: 8-shot contexts of 1-2k tokens
# (modified_arithmetic, object_counting, tense, auto_categorization, question_formation_json,
# unnatural_in_context_learning/dates). A first screen with them ran ~6 s per 8-shot doc.


def task_name(bigbench_name: str) -> str:
    return "screen_" + bigbench_name.replace("/", "_")


def write_tasks(folder: Path, names: list[str]) -> None:
    shutil.copy(TEMPLATE, folder / TEMPLATE.name)
    for name in names:
        (folder / f"{task_name(name)}.yaml").write_text(
            f"include: {TEMPLATE.name}\ntask: {task_name(name)}\ndataset_kwargs:\n  task_name: {name}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=30, help="test docs per task")
    parser.add_argument("--shots", type=int, default=8, help="k of the k-shot run")
    parser.add_argument("--tasks", nargs="+", default=CANDIDATES, help="BIG-bench task names")
    parser.add_argument("--batch-size", type=int, default=16, help="lm_eval batch size")
    parser.add_argument("--output", type=Path, required=True, help="JSON file for the results")
    args = parser.parse_args()

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from lm_eval_baking.core.models import default_model_dir
    from lm_eval_baking.core.stats import compare_paired

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    lm = HFLM(pretrained=str(default_model_dir()), batch_size=args.batch_size, device="cpu")
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        write_tasks(Path(scratch), args.tasks)
        manager = TaskManager(include_path=scratch, include_defaults=False)
        names = [task_name(n) for n in args.tasks]
        per_doc, seconds = {}, {}
        for shots in (0, args.shots):
            start = time.perf_counter()
            output = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=manager, num_fewshot=shots,
                                             limit=args.docs, apply_chat_template=True, fewshot_as_multiturn=True,
                                             log_samples=True, bootstrap_iters=0)
            seconds[shots] = time.perf_counter() - start
            for name in names:
                samples = sorted(output["samples"][name], key=lambda s: s["doc_id"])
                per_doc[(name, shots)] = [float(s["exact_match"]) for s in samples]
                if shots:
                    rows.setdefault(name, {})["examples"] = [s["resps"][0][0] for s in samples[:3]]
                else:
                    rows.setdefault(name, {})["examples_0shot"] = [s["resps"][0][0] for s in samples[:3]]
    for bigbench_name, name in zip(args.tasks, names):
        c = compare_paired(per_doc[(name, 0)], per_doc[(name, args.shots)], seed=0)
        rows[name].update(bigbench=bigbench_name, n=c.n, zero_shot=c.base_mean, k_shot=c.other_mean,
                          gain=c.difference, gain_ci=[c.difference_ci.low, c.difference_ci.high],
                          p=c.p_value, gain_excludes_zero=c.difference_ci.excludes_zero)
    result = {"command": "python bench/screen_fewshot_tasks.py " + " ".join(
                  f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
                  for k, v in vars(args).items()),
              "shots": args.shots, "docs": args.docs, "seconds": seconds, "tasks": rows}
    args.output.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print(f"{'task':<52} {'0-shot':>7} {f'{args.shots}-shot':>7}  gain [95% CI]")
    for name, row in sorted(rows.items(), key=lambda kv: -kv[1]["gain"]):
        print(f"{row['bigbench']:<52} {row['zero_shot']:7.3f} {row['k_shot']:7.3f}  {row['gain']:+.3f} "
              f"[{row['gain_ci'][0]:+.3f}, {row['gain_ci'][1]:+.3f}]" + ("  *" if row["gain_excludes_zero"] else ""))
    print(f"seconds: {seconds}")


if __name__ == "__main__":
    main()
