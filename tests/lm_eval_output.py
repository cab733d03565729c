"""lm_eval 0.4.13 `--output_path ... --log_samples` folders, written by hand in the exact shape lm_eval writes
(lm_eval/evaluator.py's logged samples, loggers/evaluation_tracker.py's file names, a real run's results keys)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

STAMP = "2026-01-01T00-00-00.000000"


def doc_hash(doc: dict) -> str:
    """lm_eval's hash_string(json.dumps(doc, indent=2, ensure_ascii=False))."""
    return hashlib.sha256(json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8")).hexdigest()


def default_docs(task: str, n: int) -> list[dict]:
    return [{"question": f"{task}: question {i}?", "choices": ["a", "b", "c", "d"], "label": i % 4} for i in range(n)]


def write_run(root, scores: dict[str, dict[str, list]], *, higher: dict[str, dict[str, bool | None]] | None = None,
              docs: dict[str, list[dict]] | None = None, n_shot: int = 0, system_instruction: str | None = None,
              chat_template: str | None = None, fewshot_as_multiturn: bool | None = None, peft: str | None = None,
              groups: dict[str, list[str]] | None = None, samples: bool = True, stamp: str = STAMP,
              task_config: dict | None = None) -> Path:
    """A run of `scores` (task -> "metric" or "metric,filter" -> per-doc values) under root/MODEL/; its folder.

    A group's row (mmlu) in `groups` gets the pooled mean of its members' first metric, as lm_eval reports it.
    """
    folder = Path(root) / "__models__base"
    folder.mkdir(parents=True, exist_ok=True)
    results, configs, n_shots, directions, counts = {}, {}, {}, {}, {}
    for task, metrics in scores.items():
        n = len(next(iter(metrics.values())))
        task_docs = (docs or {}).get(task) or default_docs(task, n)
        results[task] = {"name": task, "alias": task, "sample_len": n}
        by_filter: dict[str, dict[str, list]] = {}
        for key, values in metrics.items():
            metric, _, filter_name = key.partition(",")
            by_filter.setdefault(filter_name or "none", {})[metric] = values
            numbers = [v for v in values if isinstance(v, (int, float))]
            mean = sum(numbers) / len(numbers) if numbers else 0.0
            results[task][f"{metric},{filter_name or 'none'}"] = mean
            results[task][f"{metric}_stderr,{filter_name or 'none'}"] = 0.01
        configs[task] = {"task": task, "dataset_path": "tiny", "test_split": "test", "doc_to_text": "{{question}}",
                         "doc_to_target": "label", "doc_to_choice": "{{choices}}", "description": "",
                         "target_delimiter": " ", "fewshot_delimiter": "\n\n", "num_fewshot": n_shot,
                         "output_type": "multiple_choice", "repeats": 1, "should_decontaminate": False,
                         "metadata": {"version": 1.0, "pretrained": "base", **({"peft": peft} if peft else {})},
                         **(task_config or {})}
        n_shots[task] = n_shot
        directions[task] = {m.partition(",")[0]: (higher or {}).get(task, {}).get(m.partition(",")[0], True)
                            for m in metrics}
        counts[task] = {"original": n, "effective": n}
        if samples:
            _write_samples(folder / f"samples_{task}_{stamp}.jsonl", task_docs, by_filter)
    for group, members in (groups or {}).items():
        first = next(iter(scores[members[0]]))
        pooled = [v for m in members for v in scores[m].get(first, [])]
        results[group] = {"name": group, "alias": group, first if "," in first else f"{first},none":
                          sum(pooled) / len(pooled)}
        directions[group] = {first.partition(",")[0]: True}
    data = {
        "results": results, "group_subtasks": dict(groups or {}), "configs": configs,
        "versions": {t: 1.0 for t in scores}, "n-shot": n_shots, "higher_is_better": directions,
        "n-samples": counts,
        "config": {"model": "hf", "model_args": {"pretrained": "base", **({"peft": peft} if peft else {})},
                   "batch_size": "8", "device": "cpu", "limit": None, "bootstrap_iters": 100000, "gen_kwargs": {},
                   "random_seed": 0, "numpy_seed": 1234, "torch_seed": 1234, "fewshot_seed": 1234},
        "git_hash": None, "date": 1767225600.0, "lm_eval_version": "0.4.13", "task_hashes": {},
        "model_source": "hf", "model_name": "base", "model_name_sanitized": "__models__base",
        "system_instruction": system_instruction, "system_instruction_sha": None,
        "fewshot_as_multiturn": fewshot_as_multiturn, "chat_template": chat_template, "chat_template_sha": None,
        "total_evaluation_time_seconds": "1.0",
    }
    (folder / f"results_{stamp}.json").write_text(json.dumps(data, indent=2), "utf-8")
    return Path(root)


def _write_samples(path: Path, task_docs: list[dict], by_filter: dict[str, dict[str, list]]) -> None:
    lines = []
    for filter_name, metrics in by_filter.items():
        for i, doc in enumerate(task_docs):
            row_metrics = {m: values[i] for m, values in metrics.items() if values[i] is not None}
            lines.append(json.dumps({
                "doc_id": i, "doc": doc, "target": str(doc.get("label", "")),
                "arguments": {"gen_args_0": {"arg_0": doc.get("question", ""), "arg_1": " a"}},
                "resps": [[["-1.5", "False"]]], "filtered_resps": [["-1.5", "False"]], "filter": filter_name,
                "metrics": list(row_metrics), "doc_hash": doc_hash(doc),
                "prompt_hash": hashlib.sha256(str(doc.get("question", "")).encode()).hexdigest(),
                "target_hash": hashlib.sha256(str(doc.get("label", "")).encode()).hexdigest(), **row_metrics,
            }, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", "utf-8")
