"""What `compare` pairs: two lm_eval runs read, checked to be comparable, and matched doc by doc.

A run is an lm_eval `--output_path` folder (or one results_*.json) written with `--log_samples`. Two runs are
compared on every task (or group) both ran and every metric both report, over the docs whose `doc_id` and
`doc_hash` agree. Anything that makes the pairing wrong is refused in one line, before anything is computed:
different docs, different few-shot or prompt settings, a metric without per-doc values, a value no metric can
take. A group (mmlu) is one row: its member tasks' docs pooled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..core.verdicts import refuse_impossible
from ..errors import BakingError
from ..utils.text import listed, quoted
from .compare_settings import DEFAULT_CLUSTERS
from .results_files import ResultsFile, Skip, is_number, parse_results_file, read_json
from .samples import SamplesError, read_samples_by_filter, samples_file

# Run-wide settings that change every prompt, and the lm_eval option that sets each.
_RUN_SETTINGS = (("system_instruction", "--system_instruction"), ("chat_template", "--apply_chat_template"),
                 ("fewshot_as_multiturn", "--fewshot_as_multiturn"))
# Task config entries that do not change what a doc is asked: metadata holds the model_args (peft=...).
_UNCOMPARED_CONFIG = frozenset({"metadata"})
_RERUN = "rerun lm_eval with --log_samples"


@dataclass
class Run:
    label: str
    """'baseline' or 'candidate', as error lines name it."""
    given: Path
    tasks: dict[str, tuple[Path, dict, ResultsFile]] = field(default_factory=dict)
    """task -> (results file, its raw JSON, the parsed file), for every task and group in results."""
    _samples: dict[str, dict] = field(default_factory=dict)

    def top_level(self) -> list[str]:
        """The tasks and groups run on their own: not a member of a group of the same file."""
        members = {m for _, _, parsed in self.tasks.values() for group in parsed.group_subtasks.values() for m in group}
        return sorted(t for t in self.tasks if t not in members)

    def leaves(self, task: str, _inside: frozenset = frozenset()) -> list[str]:
        """The tasks with docs under `task` (a group's members, recursively; a task is its own leaf)."""
        members = self.tasks[task][2].group_subtasks.get(task) or []
        if not members:
            return [task]
        if task in _inside:  # only a damaged file nests a group in itself
            raise BakingError(f"the {self.label} run's group_subtasks nest {quoted(task)} in itself; rerun lm_eval")
        inside = _inside | {task}
        return sorted({leaf for m in members for leaf in (self.leaves(m, inside) if m in self.tasks else [m])})

    def samples(self, leaf: str, fields: tuple[str, ...]) -> tuple[Path, dict[str, dict[int, dict]]]:
        results_path = self.file_of(leaf)[0]
        path = samples_file(results_path, leaf)
        if leaf not in self._samples:
            if not path.is_file():
                raise BakingError(f"the {self.label} run has no per-doc output of {leaf} ({path.name} is missing "
                                  f"beside {results_path.name}); {_RERUN}")
            try:
                self._samples[leaf] = read_samples_by_filter(path, fields)
            except SamplesError as e:
                raise BakingError(f"{path} cannot be used ({e}); {_RERUN}") from None
        return path, self._samples[leaf]

    def file_of(self, leaf: str) -> tuple[Path, dict, ResultsFile]:
        """The results file that ran `leaf` (a group's members are in the group's file)."""
        if leaf in self.tasks:
            return self.tasks[leaf]
        for entry in self.tasks.values():
            if any(leaf in members for members in entry[2].group_subtasks.values()):
                return entry
        raise BakingError(f"the {self.label} run names {leaf} in a group but has no results for it; {_RERUN}")


def read_run(given, label: str) -> Run:
    """Every results_*.json under `given` (or `given` itself), checked; a task in two files is ambiguous."""
    path = Path(given)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("results_*.json")
                       if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    else:
        raise BakingError(f"{label} {path} does not exist; pass an lm_eval --output_path folder or a results_*.json")
    if not files:
        raise BakingError(f"no lm_eval results (results_*.json) under {label} {path}; pass the --output_path folder "
                          "of an lm_eval run made with --log_samples")
    run = Run(label, path)
    for file in files:
        try:
            data = read_json(file)
            parsed = parse_results_file(data)
        except Skip as e:
            raise BakingError(f"{label} file {file} cannot be used ({e})") from None
        for task in parsed.results:
            if task in run.tasks:
                raise BakingError(f"{label} {path} holds two runs of {quoted(task)} ({run.tasks[task][0].name} and "
                                  f"{file.name}); pass one results_*.json file, or give each run its own --output_path")
            run.tasks[task] = (file, data, parsed)
    return run


@dataclass
class PairedMetric:
    """One row to judge: a task's (or group's) metric over the docs both runs scored, in the same order."""
    task: str
    metric: str
    """lm_eval's name, with its filter unless that is 'none' (exact_match,strict-match)."""
    higher_is_better: bool | None
    baseline: list[float]
    candidate: list[float]
    clusters: list[str] | None
    """One label per doc when docs come in correlated groups, else None."""


def paired_metrics(baseline: Run, candidate: Run, named_clusters: dict[str, tuple[str, ...]]
                   ) -> tuple[list[PairedMetric], list[str]]:
    """(the rows to judge, notes on shared metrics that have no per-doc score); a BakingError when not comparable."""
    for run in (baseline, candidate):
        if not run.top_level():  # every task a member of a group: only a damaged file nests groups in a circle
            raise BakingError(f"the {run.label} run's group_subtasks make every task a member of another; rerun "
                              "lm_eval, its results file is damaged")
    shared = [t for t in baseline.top_level() if t in set(candidate.top_level())]
    if not shared:
        raise BakingError(f"the runs share no task (baseline: {listed(baseline.top_level(), 80)}; candidate: "
                          f"{listed(candidate.top_level(), 80)}); run lm_eval on the same --tasks for both")
    known = {leaf for t in shared for leaf in [t, *baseline.leaves(t)]}
    unknown = [t for t in named_clusters if t not in known]
    if unknown:
        raise BakingError(f"--cluster names {quoted(unknown[0])}, which is not a task of both runs; choose from: "
                          f"{listed(sorted(known), 80)}")
    _check_run_settings(baseline, candidate, shared)
    rows, notes = [], []
    for task in shared:
        leaves = _same_leaves(baseline, candidate, task)
        for leaf in leaves:
            _check_task_settings(baseline, candidate, leaf)
        for metric, filter_name in _shared_metrics(baseline, candidate, task):
            row, note = _pair(baseline, candidate, task, leaves, metric, filter_name, named_clusters)
            rows += [row] if row else []
            notes += [note] if note else []
    if not rows:
        raise BakingError(f"no shared metric has per-doc scores to pair ({'; '.join(notes)[:200]}); compare tasks "
                          "whose metrics are means of per-doc scores")
    return rows, notes


def _check_run_settings(baseline: Run, candidate: Run, tasks: list[str]) -> None:
    for task in tasks:
        a, b = baseline.tasks[task][1], candidate.tasks[task][1]
        for key, option in _RUN_SETTINGS:
            if a.get(key) != b.get(key):
                _differ(key, a.get(key), b.get(key), f"the same {option}")
        seeds = [(d.get("config") or {}).get("fewshot_seed") if isinstance(d.get("config"), dict) else None
                 for d in (a, b)]
        if seeds[0] != seeds[1]:
            _differ("few-shot seed", *seeds, "the same --seed (its fourth value seeds the few-shot examples)")


def _check_task_settings(baseline: Run, candidate: Run, leaf: str) -> None:
    a, b = (_task_setup(run, leaf) for run in (baseline, candidate))
    if a[0] != b[0]:
        _differ(f"{leaf}'s n-shot", a[0], b[0], "--num_fewshot")
    for key in sorted(set(a[1]) | set(b[1])):
        if a[1].get(key) != b[1].get(key):
            _differ(f"{leaf}'s task config {key}", a[1].get(key), b[1].get(key),
                    "the same task definition (the same lm_eval version and task YAML)")


def _task_setup(run: Run, leaf: str) -> tuple[object, dict]:
    data = run.file_of(leaf)[1]
    n_shot = data.get("n-shot") if isinstance(data.get("n-shot"), dict) else {}
    configs = data.get("configs") if isinstance(data.get("configs"), dict) else {}
    config = configs.get(leaf) if isinstance(configs.get(leaf), dict) else {}
    return n_shot.get(leaf), {k: v for k, v in config.items() if k not in _UNCOMPARED_CONFIG}


def _differ(what: str, a, b, fix: str) -> None:
    raise BakingError(f"the runs differ in {what} (baseline {quoted(a, 40)}, candidate {quoted(b, 40)}), so their "
                      f"scores are not paired; rerun both with {fix}")


def _same_leaves(baseline: Run, candidate: Run, task: str) -> list[str]:
    a, b = baseline.leaves(task), candidate.leaves(task)
    if a != b:
        only = sorted(set(a) ^ set(b))
        raise BakingError(f"{task} is a group of other tasks in the two runs ({len(a)} and {len(b)} tasks; e.g. "
                          f"{quoted(only[0])} in one only); run lm_eval on the same --tasks for both")
    return a


def _shared_metrics(baseline: Run, candidate: Run, task: str) -> list[tuple[str, str]]:
    def metrics(run: Run) -> set[tuple[str, str]]:
        values = run.tasks[task][2].results[task]
        keys = {tuple(k.split(",", 1)) for k, v in values.items() if "," in k and is_number(v)}
        return {(m, f) for m, f in keys if not m.endswith("_stderr")}

    return sorted(metrics(baseline) & metrics(candidate))


def _pair(baseline: Run, candidate: Run, task: str, leaves: list[str], metric: str, filter_name: str,
          named_clusters: dict) -> tuple[PairedMetric | None, str | None]:
    shown = metric if filter_name == "none" else f"{metric},{filter_name}"
    values: tuple[list, list] = ([], [])
    labels: list[str] = []
    clustered = False
    for leaf in leaves:
        fields = named_clusters.get(leaf) or named_clusters.get(task) or DEFAULT_CLUSTERS.get(leaf, ())
        (path_a, a), (path_b, b) = (run.samples(leaf, fields) for run in (baseline, candidate))
        if filter_name not in a and filter_name not in b and len(leaves) > 1:
            continue  # a member of a group whose other members use this filter
        docs_a, docs_b = (_filtered(docs, path, filter_name) for docs, path in ((a, path_a), (b, path_b)))
        _same_docs(leaf, docs_a, docs_b, path_a)
        if any(isinstance(d.get(metric), list) for docs in (docs_a, docs_b) for d in docs.values()):
            return None, f"{task} {shown}: a corpus-level metric (no per-doc score to pair)"
        scored = [sorted(d for d, entry in docs.items() if metric in entry) for docs in (docs_a, docs_b)]
        if not scored[0] and not scored[1]:  # a member of a group that reports other metrics
            continue
        for docs_scored, run, path in ((scored[0], baseline, path_a), (scored[1], candidate, path_b)):
            if not docs_scored:
                raise BakingError(f"{task} reports {shown} but the {run.label}'s per-doc output of {leaf} has no "
                                  f"{metric} values ({path.name}); {_RERUN}")
        if scored[0] != scored[1]:
            raise BakingError(f"{leaf} {shown}: the baseline scores {len(scored[0])} docs, the candidate "
                              f"{len(scored[1])}; {_RERUN} on the same docs for both")
        for docs, path, out in ((docs_a, path_a, values[0]), (docs_b, path_b, values[1])):
            column = [float(docs[d][metric]) for d in scored[0]]
            for value in (min(column), max(column)) if column else ():
                refuse_impossible(f"{task}:{metric}", value, None, str(path))
            out += column
        use = _cluster_fields(leaf, fields, docs_a, scored[0], named_clusters.get(leaf) or named_clusters.get(task))
        clustered |= use is not None
        labels += [json.dumps([leaf, *(docs_a[d].get(f) for f in use)] if use else [leaf, "doc", d], default=str)
                   for d in scored[0]]
    if not values[0]:
        raise BakingError(f"{task} reports {shown} but no per-doc output of it has {metric} values; {_RERUN}")
    higher = _direction(baseline, task, metric)
    if higher is None:
        higher = _direction(candidate, task, metric)
    for run in (baseline, candidate):
        refuse_impossible(f"{task}:{metric}", run.tasks[task][2].results[task][f"{metric},{filter_name}"], None,
                          str(run.tasks[task][0]))
    return PairedMetric(task, shown, higher, values[0], values[1], labels if clustered else None), None


def _filtered(by_filter: dict[str, dict[int, dict]], path: Path, filter_name: str) -> dict[int, dict]:
    if filter_name not in by_filter:
        raise BakingError(f"{path} has no rows of filter {quoted(filter_name)} (it has {listed(sorted(by_filter))}); "
                          f"{_RERUN}")
    return by_filter[filter_name]


def _same_docs(leaf: str, a: dict[int, dict], b: dict[int, dict], where: Path) -> None:
    missing = next((d for d in sorted(a) if not a[d].get("hash")), None)
    if missing is not None:
        raise BakingError(f"{where}: doc {missing} has no doc_hash, so it cannot be matched; rerun lm_eval 0.4 with "
                          "--log_samples")
    common = set(a) & set(b)
    differing = next((d for d in sorted(common) if a[d].get("hash") != b[d].get("hash")), None)
    if differing is not None:
        raise BakingError(f"{leaf}: doc {differing} is another document in each run (its doc_hash differs), so the "
                          "runs evaluated different data; rerun both on the same dataset version")
    if set(a) != set(b):
        raise BakingError(f"{leaf}: the runs answered different docs (baseline {len(a)}, candidate {len(b)}, "
                          f"{len(common)} in both); rerun both with the same --limit and --samples")


def _cluster_fields(leaf: str, fields: tuple[str, ...], docs: dict[int, dict], ids: list[int],
                    named: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """The fields that cluster `leaf`'s docs: a named --cluster must be in every doc; a default only where it is."""
    if not fields or not ids:
        return None
    lacking = next((d for d in ids for f in fields if docs[d].get(f) is None), None)
    if lacking is None:
        return fields
    if named:
        absent = next(f for f in fields if docs[lacking].get(f) is None)
        raise BakingError(f"--cluster {leaf}={'+'.join(named)}: doc {lacking} has no field {quoted(absent)}; name a "
                          "field every doc of the task has (see a doc in its samples_*.jsonl)")
    return None


def _direction(run: Run, task: str, metric: str) -> bool | None:
    return run.tasks[task][2].higher_is_better.get(task, {}).get(metric)
