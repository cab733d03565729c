"""Leaderboard reports: lm_eval results files and bake records -> report.md + report.html.

Inputs are found recursively under the paths given:

    results_*.json                       lm_eval `--output_path` results (any number of runs)
    samples_baking_persona_drift_*.jsonl lm_eval `--log_samples` output (drift by turn)
    baking.json                          a bake (KL per epoch); pursuit rounds and exports too
    pursuit.json                         a prompt pursuit (score per round)
    forgetting.json                      `lm-eval-baking forgetting` output

Every lm_eval run becomes part of one *variant* row, identified by what was
evaluated: the `pretrained=` model, the `peft=` adapter and the
`--system_instruction`. Runs of different tasks on the same variant merge into
one row. Anything that cannot be used (unreadable file, another lm_eval
version, a task without its metric) is listed under "Skipped" with the reason;
the report itself never fails on one bad file.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BakingError
from .io import staged_directory, write_json

# lm_eval's results layout ("metric,filter" keys, config.model_args, system_instruction)
# is the same across 0.4.x; 0.3 and older wrote another shape.
SUPPORTED_LM_EVAL = "0.4."
REPORT_FILES = ("report.md", "report.html", "report.json")
DRIFT_TASK = "baking_persona_drift"
FORGETTING_GROUP = "baking_forgetting"
FORGETTING_METRIC = "acc"
# For tasks we know nothing about, the first of these that the task reports is
# its headline column; otherwise its first higher-is-better metric.
PREFERRED_METRICS = ("acc", "exact_match", "acc_norm", "f1", "bleu")


@dataclass(frozen=True)
class Column:
    """A headline leaderboard column and the name thresholds use for it (`check --min NAME=...`)."""

    name: str
    title: str
    task: str
    metric: str
    higher_is_better: bool


HEADLINE_COLUMNS = (
    Column("kl", "MC-KL / token", "baking_mckl", "kl_per_token", False),
    Column("quality", "quality", "baking_mckl", "quality", True),
    Column("adherence", "persona adherence", DRIFT_TASK, "adherence", True),
    Column("drift", "drift (early − late)", DRIFT_TASK, "drift", False),
    Column("forgetting_acc", "forgetting acc", FORGETTING_GROUP, FORGETTING_METRIC, True),
)
FORGETTING = "forgetting"
"""Derived metric: relative drop (%) of the forgetting accuracy versus the plain base model."""


@dataclass
class Measurement:
    value: float
    stderr: float | None = None
    higher_is_better: bool | None = None
    source: str = ""


@dataclass(frozen=True)
class Variant:
    """What one lm_eval run evaluated."""

    model: str
    adapter: str | None = None
    system_instruction: str | None = None

    @property
    def is_plain_base(self) -> bool:
        return self.adapter is None and not self.system_instruction


@dataclass
class Row:
    variant: Variant
    label: str = ""
    kind: str = ""
    metrics: dict[tuple[str, str], Measurement] = field(default_factory=dict)
    """(task, metric) -> measurement; derived metrics use the task name FORGETTING."""
    drift_curve: dict[int, float] | None = None
    sources: list[str] = field(default_factory=list)
    dates: dict[str, float] = field(default_factory=dict)
    """task -> date of the run it came from (the newest run of a task wins)."""

    def get(self, name: str) -> Measurement | None:
        """A metric by column name (`kl`, `quality`, ..., `forgetting`) or as `TASK:METRIC`."""
        if name == FORGETTING:
            return self.metrics.get((FORGETTING, "drop_pct"))
        for column in HEADLINE_COLUMNS:
            if column.name == name:
                return self.metrics.get((column.task, column.metric))
        task, _, metric = name.partition(":")
        return self.metrics.get((task, metric))


@dataclass
class Skipped:
    path: str
    reason: str
    whole_file: bool = True
    """False when the file was used but something in it was not (a missing metric)."""


@dataclass
class Collection:
    rows: list[Row]
    bakes: list[tuple[str, dict]]
    pursuits: list[tuple[str, dict]]
    forgetting_reports: list[tuple[str, dict]]
    skipped: list[Skipped]
    subtasks: dict[str, list[str]]
    """group -> member tasks, as lm_eval reported them."""

    def row(self, label: str) -> Row | None:
        return next((r for r in self.rows if r.label == label), None)


# ---------------------------------------------------------------------------- reading inputs


def input_files(paths) -> list[Path]:
    """Every file under `paths` (files are taken as they are); a missing path is a BakingError."""
    files = []
    for path in map(Path, paths):
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p, path)))
        else:
            raise BakingError(f"{path} does not exist; pass lm_eval --output_path folders, results_*.json files "
                              "or bake folders")
    return files


def _hidden(path: Path, root: Path) -> bool:
    # Staging folders of half-written bakes and reports start with '.'.
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _kind_of_file(path: Path) -> str | None:
    name = path.name
    if name.startswith("results_") and name.endswith(".json"):
        return "results"
    if name in ("baking.json", "pursuit.json", "forgetting.json"):
        return name.removesuffix(".json")
    return None


def collect(paths) -> Collection:
    """Read every input under `paths` into variant rows and records; bad files go to `skipped`."""
    files = [(f, _kind_of_file(f)) for f in input_files(paths)]
    files = [(f, kind) for f, kind in files if kind]
    if not files:
        shown = ", ".join(map(str, paths))
        raise BakingError(f"no lm_eval results (results_*.json) or bake records under {shown}; run lm_eval with "
                          "--output_path DIR (or `lm-eval-baking bake`) first and pass that folder")
    rows: dict[Variant, Row] = {}
    collection = Collection(rows=[], bakes=[], pursuits=[], forgetting_reports=[], skipped=[], subtasks={})
    for path, kind in files:
        try:
            data = _read_json(path)
            if kind == "results":
                _add_results(path, data, rows, collection)
            elif kind == "baking":
                _check_record(data, "lm-eval-baking/bake", path)
                collection.bakes.append((str(path.parent), data))
            elif kind == "pursuit":
                _check_record(data, "lm-eval-baking/pursuit", path)
                collection.pursuits.append((str(path.parent), data))
            else:
                if not {"per_task", "adapters", "tasks", "base_model"} <= set(data):
                    raise _Skip("not a `lm-eval-baking forgetting` report (no per_task/adapters)")
                collection.forgetting_reports.append((str(path.parent), data))
        except _Skip as skip:
            collection.skipped.append(Skipped(str(path), str(skip)))
    _add_forgetting_reports(rows, collection)
    _add_forgetting_drops(rows)
    collection.rows = _label_rows(rows)
    if not collection.rows and not collection.bakes and not collection.pursuits:
        reasons = "; ".join(f"{s.path}: {s.reason}" for s in collection.skipped[:3])
        raise BakingError(f"nothing usable in {', '.join(map(str, paths))} ({reasons}); pass lm_eval 0.4 results")
    return collection


class _Skip(Exception):
    """Why one input file is not used."""


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise _Skip(f"unreadable ({getattr(e, 'strerror', None) or e})") from None
    except json.JSONDecodeError as e:
        raise _Skip(f"not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise _Skip("not usable JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise _Skip("not a JSON object")
    try:
        # A \ud800-style escape loads as a lone surrogate, which no report file can be written with.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise _Skip("holds a \\u escape of a lone surrogate (text that is not valid Unicode)") from None
    return data


def _check_record(data: dict, expected_format: str, path: Path) -> None:
    if data.get("format") != expected_format:
        raise _Skip(f"not a {expected_format} record (format {data.get('format')!r})")


def _add_results(path: Path, data: dict, rows: dict[Variant, Row], collection: Collection) -> None:
    run = _parse_results_file(data)
    variant = run.variant
    date = run.date if run.date is not None else path.stat().st_mtime
    measured = {task: metrics for task, values in run.results.items()
                if (metrics := _task_metrics(values, run.higher_is_better.get(task, {}), str(path)))}
    # Checked before the row exists, so a skipped file leaves no empty row behind.
    if not measured:
        raise _Skip("holds no numeric metric values")
    row = rows.setdefault(variant, Row(variant))
    row.sources.append(str(path))
    for group, members in run.group_subtasks.items():
        if members:
            collection.subtasks[group] = members
    for task, metrics in measured.items():
        if task in row.dates and row.dates[task] > date:
            collection.skipped.append(Skipped(str(path), f"{task} for '{_plain(variant)}': a newer run is used",
                                              whole_file=False))
            continue
        if task in row.dates:
            collection.skipped.append(Skipped(str(path), f"{task} for '{_plain(variant)}': replaces an older run",
                                              whole_file=False))
        row.metrics = {k: v for k, v in row.metrics.items() if k[0] != task}
        row.metrics.update({(task, metric): m for metric, m in metrics.items()})
        row.dates[task] = date
        if task == DRIFT_TASK:
            row.drift_curve = _drift_curve(path, collection) or row.drift_curve
    for column in HEADLINE_COLUMNS:
        if column.task in run.results and (column.task, column.metric) not in row.metrics:
            collection.skipped.append(Skipped(str(path), f"{column.task} reports no {column.metric} "
                                              f"(or it is not a number); its '{column.title}' cell stays empty",
                                              whole_file=False))


@dataclass(frozen=True)
class _ResultsFile:
    """The parts of one lm_eval 0.4 results file that the report uses, each of the type lm_eval writes."""

    variant: Variant
    results: dict[str, dict]
    """task -> {"metric,filter": value}; entries that are not objects are left out."""
    higher_is_better: dict[str, dict[str, bool | None]]
    group_subtasks: dict[str, list[str]]
    date: float | None
    """None when the file records no date: its modification time stands in."""


def _parse_results_file(data: dict) -> _ResultsFile:
    """Check the shape of everything read from a results file, here and only here.

    A damaged or hand-edited file can hold any JSON where lm_eval writes an
    object or a string; such a file is skipped naming the field at fault, so
    the code past this point (and the `check` gate) can trust the types.
    """
    results = data.get("results")
    if not isinstance(results, dict):
        raise _Skip("not an lm_eval results file (no 'results' object)")
    version = data.get("lm_eval_version")
    if not isinstance(version, str) or not version.startswith(SUPPORTED_LM_EVAL):
        written_by = _one_line(version) if version else "before 0.4 (no lm_eval_version)"
        raise _Skip(f"written by lm_eval {written_by}; this report reads lm_eval {SUPPORTED_LM_EVAL}x results: "
                    "re-run the evaluation with lm_eval 0.4.13")
    higher_is_better = _object_field(data, "higher_is_better")
    for task in list(higher_is_better):
        higher_is_better[task] = _object_field(higher_is_better, task, f"higher_is_better.{_one_line(task)}")
        for metric, higher in higher_is_better[task].items():
            # lm_eval writes null for a group whose members disagree on the direction.
            if higher is not None and not isinstance(higher, bool):
                raise _Skip(f"higher_is_better.{_one_line(task)}.{_one_line(metric)} is {_one_line(higher)}, "
                            "not true, false or null")
    group_subtasks = _object_field(data, "group_subtasks")
    for group, members in group_subtasks.items():
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise _Skip(f"group_subtasks.{_one_line(group)} is {_one_line(members)}, not a list of task names")
    date = data.get("date")
    if date is not None and not _is_number(date):
        raise _Skip(f"date is {_one_line(date)}, not a number (seconds since the epoch)")
    return _ResultsFile(variant=_variant_of(data),
                        results={task: values for task, values in results.items() if isinstance(values, dict)},
                        higher_is_better=higher_is_better, group_subtasks=group_subtasks,
                        date=None if date is None else float(date))


def _object_field(data: dict, key: str, where: str | None = None) -> dict:
    """data[key] as a fresh dict; missing and null read as empty, any other non-object skips the file."""
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Skip(f"{where or key} is {_one_line(value)}, not a JSON object")
    return dict(value)


def _one_line(value, width: int = 40) -> str:
    """A value read from a file, short and on one line: reasons end up in error lines and list items."""
    text = value if isinstance(value, str) and value.isprintable() else json.dumps(value)
    return text if len(text) <= width else text[:width - 1] + "…"


def _task_metrics(values: dict, higher_is_better: dict, source: str) -> dict[str, Measurement]:
    """'acc,none': v and 'acc_stderr,none': se -> {'acc': Measurement(v, se)}; other filters keep their name."""
    metrics = {}
    for key, value in values.items():
        metric, comma, filter_name = key.partition(",")
        if not comma or metric.endswith("_stderr") or not _is_number(value):
            continue
        name = metric if filter_name == "none" else f"{metric},{filter_name}"
        stderr = values.get(f"{metric}_stderr,{filter_name}")
        metrics[name] = Measurement(float(value), float(stderr) if _is_number(stderr) else None,
                                    higher_is_better.get(metric), source)
    # Drift has no stderr of its own (custom aggregation); its buckets' stderrs bound it.
    drift, early, late = (metrics.get(m) for m in ("drift", "adherence_early", "adherence_late"))
    if drift and drift.stderr is None and early and late and early.stderr is not None and late.stderr is not None:
        drift.stderr = math.hypot(early.stderr, late.stderr)
    return metrics


def _is_number(value) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float (JSON allows any number of digits)
        return False


def _variant_of(data: dict) -> Variant:
    config = _object_field(data, "config")
    model_args = config.get("model_args")
    if isinstance(model_args, str):  # the CLI string form: "pretrained=X,peft=Y"
        model_args = dict(part.split("=", 1) for part in model_args.split(",") if "=" in part)
    elif model_args is not None and not isinstance(model_args, dict):
        raise _Skip(f"config.model_args is {_one_line(model_args)}, not an object or a 'pretrained=...' string")
    model_args = model_args or {}
    model = _name_field(model_args, "pretrained", "config.model_args pretrained") or _name_field(data, "model_name")
    if not model:
        raise _Skip("config.model_args names no pretrained model")
    adapter = _name_field(model_args, "peft", "config.model_args peft")
    system_instruction = data.get("system_instruction")
    if system_instruction is not None and not isinstance(system_instruction, str):
        raise _Skip(f"system_instruction is {_one_line(system_instruction)}, not a string or null")
    return Variant(model, adapter, system_instruction or None)


def _name_field(data: dict, key: str, where: str | None = None) -> str | None:
    """A model or adapter name: it labels rows and error lines, and an adapter is opened as a path."""
    value = data.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.isprintable():
        raise _Skip(f"{where or key} is {_one_line(value)}, not a model name or path on one line")
    return value


def _drift_curve(results_path: Path, collection: Collection) -> dict[int, float] | None:
    """Adherence by turn from the `--log_samples` file written with this results file, if any."""
    from .drift import adherence_curve

    stamp = results_path.stem.removeprefix("results_")
    samples = results_path.with_name(f"samples_{DRIFT_TASK}_{stamp}.jsonl")
    if not samples.is_file():
        return None
    try:
        return adherence_curve(samples)
    except (BakingError, KeyError, TypeError, OSError) as e:
        collection.skipped.append(Skipped(str(samples), f"no drift-by-turn curve ({e})", whole_file=False))
        return None


def _add_forgetting_reports(rows: dict[Variant, Row], collection: Collection) -> None:
    """Rows for adapters scored only by `lm-eval-baking forgetting`: mean accuracy over its tasks."""
    for source, report in collection.forgetting_reports:
        try:
            tasks = report["tasks"]
            base_scores = [report["per_task"][t]["base"]["score"] for t in tasks]
            base = rows.setdefault(Variant(str(report["base_model"])), Row(Variant(str(report["base_model"]))))
            _set_if_missing(base, (FORGETTING_GROUP, FORGETTING_METRIC), _mean(base_scores), source)
            for adapter in report["adapters"]:
                scores = [report["per_task"][t]["adapters"][adapter]["score"] for t in tasks]
                row = rows.setdefault(Variant(base.variant.model, str(adapter)), Row(Variant(base.variant.model, str(adapter))))
                _set_if_missing(row, (FORGETTING_GROUP, FORGETTING_METRIC), _mean(scores), source)
        except (KeyError, TypeError, ZeroDivisionError) as e:
            collection.skipped.append(Skipped(source + "/forgetting.json", f"incomplete forgetting report (no {e})"))


def _set_if_missing(row: Row, key: tuple[str, str], value: float, source: str) -> None:
    # An lm_eval run of the group carries a stderr and is preferred to the forgetting report's mean.
    if key not in row.metrics:
        row.metrics[key] = Measurement(value, None, True, source)
        row.sources.append(source)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def _add_forgetting_drops(rows: dict[Variant, Row]) -> None:
    """forgetting = relative drop (%) of the forgetting accuracy versus the plain base model."""
    key = (FORGETTING_GROUP, FORGETTING_METRIC)
    for row in rows.values():
        base = rows.get(Variant(row.variant.model))
        if row.variant.is_plain_base or base is None or key not in row.metrics or key not in base.metrics:
            continue
        base_acc = base.metrics[key].value
        if base_acc:
            drop = 100.0 * (base_acc - row.metrics[key].value) / base_acc
            row.metrics[(FORGETTING, "drop_pct")] = Measurement(drop, None, False, row.metrics[key].source)


# ---------------------------------------------------------------------------- variant labels


def _plain(variant: Variant) -> str:
    label = "base" if variant.adapter is None else display_path(variant.adapter)
    return label + (" + prompt" if variant.system_instruction else "")


def display_path(path: str) -> str:
    """A path as short as it is unambiguous here: relative to the working directory when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def variant_kind(variant: Variant) -> str:
    """base / prompted base / baked / pursued / strength S / pursuit round N, plus re-prompting."""
    if variant.adapter is None:
        return "prompted base" if variant.system_instruction else "base"
    adapter = Path(variant.adapter)
    try:
        record = json.loads((adapter / "baking.json").read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        record = None
    if not isinstance(record, dict):
        kind = "adapter"
    elif record.get("kind") == "pursuit_export":
        export = record.get("pursuit_export")
        rounds = export.get("rounds") if isinstance(export, dict) else None
        kind = f"pursued ({_count(rounds, 'round')})" if isinstance(rounds, list) else "pursued"
    elif record.get("kind") == "strength_export":
        half_baking = record.get("half_baking")
        strength = half_baking.get("strength") if isinstance(half_baking, dict) else None
        kind = f"strength {_fmt(strength, 'g')}"
    elif adapter.name.startswith("round-") and (adapter.parent / "pursuit.json").is_file():
        kind = f"pursuit {adapter.name.replace('-', ' ')}"
    else:
        kind = "baked"
    return f"re-prompted {kind}" if variant.system_instruction else kind


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'s' * (len(items) != 1)}"


def _label_rows(rows: dict[Variant, Row]) -> list[Row]:
    several_models = len({v.model for v in rows}) > 1
    ordered = sorted(rows.values(), key=lambda r: (r.variant.model, r.variant.adapter is not None,
                                                   r.variant.adapter or "", bool(r.variant.system_instruction),
                                                   r.variant.system_instruction or ""))
    for row in ordered:
        row.kind = variant_kind(row.variant)
        row.label = (f"{Path(row.variant.model).name}: " if several_models else "") + _plain(row.variant)
    seen: dict[str, int] = {}
    for row in ordered:  # two system instructions on one adapter: tell them apart
        seen[row.label] = seen.get(row.label, 0) + 1
    for row in ordered:
        if seen[row.label] > 1 and row.variant.system_instruction:
            from .baking import text_sha256

            row.label += f" #{text_sha256(row.variant.system_instruction)[:6]}"
    return ordered


# ---------------------------------------------------------------------------- leaderboard tables


def other_columns(collection: Collection) -> list[tuple[str, str]]:
    """(task, metric) headline cells for every task that is neither ours nor a member of a shown group."""
    ours = {c.task for c in HEADLINE_COLUMNS} | {FORGETTING}
    members = {t for group, tasks in collection.subtasks.items() for t in tasks}
    by_task: dict[str, dict[str, Measurement]] = {}
    for row in collection.rows:
        for (task, metric), m in row.metrics.items():
            if task not in ours and task not in members:
                by_task.setdefault(task, {}).setdefault(metric, m)
    columns = []
    for task, metrics in sorted(by_task.items()):
        preferred = [m for m in PREFERRED_METRICS if m in metrics]
        preferred += [m for m, measure in metrics.items() if measure.higher_is_better is not None]
        columns.append((task, (preferred or list(metrics))[0]))
    return columns


def format_value(m: Measurement | None, spec: str = ".4f", suffix: str = "") -> str:
    if m is None:
        return "–"
    text = format(m.value, spec) + suffix
    return text + (f" ± {format(m.stderr, spec)}" if m.stderr is not None else "")


def leaderboard(collection: Collection) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the leaderboard: one row per variant."""
    extra = other_columns(collection)
    header = ["variant", "kind"] + [c.title for c in HEADLINE_COLUMNS] + ["forgetting drop vs base"]
    header += [f"{task} {metric}" for task, metric in extra]
    cells = []
    for row in collection.rows:
        line = [row.label, row.kind]
        line += [format_value(row.metrics.get((c.task, c.metric)), ".3f" if c.name != "kl" else ".4f")
                 for c in HEADLINE_COLUMNS]
        line.append(format_value(row.get(FORGETTING), ".1f", "%"))
        line += [format_value(row.metrics.get(key)) for key in extra]
        cells.append(line)
    return header, cells


def all_metrics(collection: Collection) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "task", "metric", "value", "stderr", "better"]
    cells = []
    for row in collection.rows:
        for (task, metric), m in sorted(row.metrics.items()):
            better = {True: "higher", False: "lower", None: ""}[m.higher_is_better]
            cells.append([row.label, task, metric, f"{m.value:.4f}", "" if m.stderr is None else f"{m.stderr:.4f}",
                          better])
    return header, cells


def variants_table(collection: Collection) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "model", "adapter (peft=)", "system instruction", "results files"]
    cells = [[r.label, r.variant.model, r.variant.adapter or "", r.variant.system_instruction or "",
              str(len([s for s in r.sources if Path(s).name.startswith("results_")]))] for r in collection.rows]
    return header, cells


def bakes_table(collection: Collection) -> tuple[list[str], list[list[str]]]:
    header = ["bake", "prompt", "unprompted KL", "final KL", "ratio", "epochs", "wall time"]
    cells = []
    for directory, record in collection.bakes:
        kl = record.get("kl")
        if not isinstance(kl, dict):
            continue  # pursuit/strength exports carry no KL of their own
        try:
            base, final = kl["unprompted_base"], kl["per_epoch"][-1]["heldout_kl"]
            seconds = sum((record.get("performance") or {}).get("seconds", {}).values())
            cells.append([display_path(directory), _short(record["config"]["prompt"]),
                          f"{base['per_token']:.4f} ± {base['per_token_stderr']:.4f}",
                          f"{final['per_token']:.4f} ± {final['per_token_stderr']:.4f}",
                          f"{kl['ratio_to_unprompted']:.1%}", str(len(kl["per_epoch"])), f"{seconds:.0f} s"])
        except (KeyError, TypeError, IndexError):
            collection.skipped.append(Skipped(directory + "/baking.json", "bake record without KL per epoch"))
    return header, cells


def pursuit_tables(collection: Collection) -> list[tuple[str, str, list[str], list[list[str]]]]:
    tables = []
    for directory, record in collection.pursuits:
        header = ["round", "score", "improvement", "with prompt again", "held-out KL to teacher", "KL ratio"]
        cells = []
        for r in record.get("rounds") or []:
            label = "base" if r.get("round") == 0 else str(r.get("round"))
            if r.get("round") == record.get("best_round"):
                label += " (best)"
            cells.append([label, _fmt(r.get("score"), ".4f"), _fmt(r.get("improvement"), "+.1%"),
                          _fmt(r.get("reprompted_score"), ".4f"), _fmt(r.get("heldout_kl"), ".4f"),
                          _fmt(r.get("kl_ratio"), ".1%")])
        note = (f"score: {(record.get('settings') or {}).get('evaluator', '?')} (higher is better); "
                f"stopped: {record.get('stop_reason_text') or record.get('status', '?')}")
        tables.append((display_path(directory), note, header, cells))
    return tables


def _fmt(value, spec: str) -> str:
    return "–" if not _is_number(value) else format(value, spec)


def _short(text: str, width: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 1] + "…"


# ---------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=110)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def plot_kl_per_epoch(bakes: list[tuple[str, dict]]) -> bytes | None:
    """Held-out KL per answer token by epoch; epoch 0 is the unprompted base."""
    series = []
    for directory, record in bakes:
        kl = record.get("kl") if isinstance(record.get("kl"), dict) else None
        try:
            points = [kl["unprompted_base"]] + [e["heldout_kl"] for e in kl["per_epoch"]]
            series.append((display_path(directory), [p["per_token"] for p in points],
                           [p["per_token_stderr"] for p in points]))
        except (KeyError, TypeError):
            continue
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), layout="constrained")
    for label, values, errors in series:
        ax.errorbar(range(len(values)), values, yerr=errors, marker="o", capsize=3, label=label)
    ax.set_xlabel("epoch (0 = unprompted base)")
    ax.set_ylabel("held-out KL / token")
    ax.set_title("KL(prompted base ‖ model) per epoch", fontsize=10)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_pursuit(pursuits: list[tuple[str, dict]]) -> bytes | None:
    usable = [(d, r) for d, r in pursuits if r.get("rounds")]
    if not usable:
        return None
    plt = _pyplot()
    fig, (score_ax, kl_ax) = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
    for directory, record in usable:
        rounds = record["rounds"]
        name = display_path(directory)
        xs = [r["round"] for r in rounds]
        score_ax.plot(xs, [r.get("score") for r in rounds], marker="o", label=f"{name}")
        reprompted = [(r["round"], r.get("reprompted_score")) for r in rounds if _is_number(r.get("reprompted_score"))]
        if reprompted:
            score_ax.plot(*zip(*reprompted), marker="s", linestyle="--", label=f"{name} + prompt again")
        kls = [(r["round"], r["heldout_kl"]) for r in rounds if _is_number(r.get("heldout_kl"))]
        if kls:
            kl_ax.plot(*zip(*kls), marker="o", label=name)
    evaluators = {str((r.get("settings") or {}).get("evaluator", "score")) for _, r in usable}
    score_ax.set(xlabel="pursuit round (0 = base)", ylabel=" / ".join(sorted(evaluators)))
    score_ax.set_title("score per round (higher is better)", fontsize=10)
    kl_ax.set(xlabel="pursuit round", ylabel="held-out KL / token")
    kl_ax.set_title("each round's KL to its teacher", fontsize=10)
    for ax in (score_ax, kl_ax):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7)
    return _png(fig)


def plot_drift(rows: list[Row]) -> bytes | None:
    curves = [(r.label, r.drift_curve) for r in rows if r.drift_curve]
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), layout="constrained")
    for label, curve in curves:
        ax.plot(list(curve), list(curve.values()), marker="o", label=label)
    ax.set_xlabel("agent turn the probe follows")
    ax.set_ylabel("persona adherence")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Persona drift by turn (baking_persona_drift)", fontsize=10)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_forgetting(collection: Collection, threshold_pct: float) -> list[tuple[str, bytes]]:
    """Heatmaps of relative change per forgetting task: from lm_eval runs, and per forgetting.json."""
    from .forgetting import build_report, write_heatmap

    reports = []
    members = collection.subtasks.get(FORGETTING_GROUP, [])
    for base in (r for r in collection.rows if r.variant.is_plain_base):
        tasks = [t for t in members if (t, FORGETTING_METRIC) in base.metrics]
        others = [r for r in collection.rows if r.variant.model == base.variant.model and r is not base
                  and all((t, FORGETTING_METRIC) in r.metrics for t in tasks)]
        if not tasks or not others:
            continue
        scores = {None: _scores(base, tasks)}
        # The heatmap labels rows with Path(name).name, so keep '/' out of the names.
        names = [r.label.replace("/", "›") for r in others]
        scores.update({name: _scores(r, tasks) for name, r in zip(names, others)})
        report = build_report(base.variant.model, names, tasks, scores, threshold_pct)
        reports.append((f"lm_eval runs on {base.label}", report))
    reports += [(display_path(d) + "/forgetting.json", r) for d, r in collection.forgetting_reports]
    images = []
    for title, report in reports:
        with tempfile.TemporaryDirectory() as scratch:
            try:
                write_heatmap(report, Path(scratch) / "heatmap.png")
            except (KeyError, TypeError, ValueError) as e:
                collection.skipped.append(Skipped(title, f"no forgetting heatmap ({e})"))
                continue
            images.append((title, (Path(scratch) / "heatmap.png").read_bytes()))
    return images


def _scores(row: Row, tasks: list[str]) -> dict[str, dict]:
    return {t: {"metric": FORGETTING_METRIC, "score": row.metrics[(t, FORGETTING_METRIC)].value,
                "stderr": row.metrics[(t, FORGETTING_METRIC)].stderr} for t in tasks}


# ---------------------------------------------------------------------------- writing


@dataclass
class Report:
    output: Path
    collection: Collection

    @property
    def html(self) -> Path:
        return self.output / "report.html"

    @property
    def markdown(self) -> Path:
        return self.output / "report.md"


def build_report(paths, output: str | os.PathLike, *, forgetting_threshold_pct: float | None = None,
                 title: str = "lm-eval-baking report") -> Report:
    """Read `paths` and write report.md, report.html (self-contained), report.json and the plots to `output`.

    The folder is built beside `output` and renamed into place, so readers see
    the old report or the new one, never half of one.
    """
    from .forgetting import DEFAULT_THRESHOLD_PCT

    output = Path(output)
    _check_output(output, paths)
    collection = collect(paths)
    threshold = DEFAULT_THRESHOLD_PCT if forgetting_threshold_pct is None else forgetting_threshold_pct
    plots = [
        ("KL per epoch", "kl_per_epoch.png", plot_kl_per_epoch(collection.bakes)),
        ("Pursuit rounds", "pursuit_rounds.png", plot_pursuit(collection.pursuits)),
        ("Drift by turn", "drift_by_turn.png", plot_drift(collection.rows)),
    ]
    plots += [(f"Forgetting: {name}", f"forgetting_{i}.png", png)
              for i, (name, png) in enumerate(plot_forgetting(collection, threshold), 1)]
    plots = [(name, file, png) for name, file, png in plots if png]
    tables = [  # (heading, note, header, cells)
        ("Leaderboard", LEGEND, *leaderboard(collection)),
        ("Variants", "", *variants_table(collection)),
        ("Bakes", "Held-out KL per answer token from each bake's own teacher (baking.json).",
         *bakes_table(collection)),
        *[(f"Pursuit: {name}", note, h, c) for name, note, h, c in pursuit_tables(collection)],
        ("All metrics", "Every metric lm_eval reported, with its stderr.", *all_metrics(collection)),
    ]
    tables = [t for t in tables if t[3]]
    with staged_directory(output, replace=True) as staging:
        for _, file, png in plots:
            (staging / file).write_bytes(png)
        (staging / "report.md").write_text(render_markdown(title, tables, plots, collection), encoding="utf-8")
        (staging / "report.html").write_text(render_html(title, tables, plots, collection), encoding="utf-8")
        write_json(staging / "report.json", report_data(collection))
        _world_readable(staging)
    return Report(output, collection)


def _world_readable(folder: Path) -> None:
    """Temp files and folders are created 0600/0700; a report is for sharing, so apply the umask instead."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.iterdir():
        os.chmod(path, 0o666 & ~umask)


def _check_output(output: Path, paths) -> None:
    """The report replaces `output` as a whole: refuse a folder that holds anything but an old report."""
    if output.is_file():
        raise BakingError(f"--output {output} is a file; pass a folder for the report")
    resolved = output.resolve()
    for path in map(Path, paths):
        if path.exists() and (path.resolve() == resolved or resolved in path.resolve().parents):
            raise BakingError(f"--output {output} holds the input {path}; write the report to a folder of its own, "
                              f"e.g. {output / 'report'}")
    if output.is_dir():
        foreign = [p.name for p in output.iterdir() if not (p.name in REPORT_FILES or p.suffix == ".png")]
        if foreign:
            raise BakingError(f"--output {output} holds other files ({', '.join(sorted(foreign)[:3])}); the report "
                              "replaces the whole folder, so pass an empty or new folder")


def render_markdown(title, tables, plots, collection: Collection) -> str:
    """Leaderboard first, then the plots (saved beside report.md), then the detail tables."""
    lines = [f"# {title}", ""]
    for index, (heading, note, header, cells) in enumerate(tables):
        lines += [f"## {heading}", ""] + ([note, ""] if note else [])
        lines += [_md_row(header), _md_row(["---"] * len(header))] + [_md_row(c) for c in cells] + [""]
        if index == 0 and plots:
            lines += ["## Plots", ""] + [f"![{name}]({file})\n" for name, file, _ in plots]
    lines += ["## Skipped", ""]
    lines += [f"- `{s.path}`: {s.reason}" for s in collection.skipped] or ["Nothing was skipped."]
    return "\n".join(lines) + "\n"


LEGEND = ("MC-KL / token and quality: `baking_mckl` (KL from the prompted base; quality = 1 − KL/KL(unprompted base)). "
          "Persona adherence and drift (adherence at turns ≤ 5 minus turns ≥ 25): `baking_persona_drift`; drift's "
          "± combines the early and late stderrs. Forgetting acc: mean accuracy of the `baking_forgetting` "
          "BIG-bench group; its drop is relative to the base model. ± is lm_eval's stderr.")


def _md_row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def render_html(title, tables, plots, collection: Collection) -> str:
    """One self-contained page: inline CSS, plots as base64 data URIs, nothing fetched from anywhere."""
    esc = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>"]
    for index, (heading, note, header, cells) in enumerate(tables):
        table = ["<table><thead><tr>", *(f"<th>{esc(h)}</th>" for h in header), "</tr></thead><tbody>"]
        table += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in line) + "</tr>" for line in cells]
        table.append("</tbody></table>")
        note_html = f"<p class='note'>{esc(note.replace('`', ''))}</p>" if note else ""
        if heading == "All metrics":  # long: folded so the page opens on the leaderboard and plots
            parts.append(f"<details><summary><h2>{esc(heading)} ({len(cells)} rows)</h2></summary>"
                         f"{note_html}{''.join(table)}</details>")
        else:
            parts.append(f"<h2>{esc(heading)}</h2>{note_html}{''.join(table)}")
        if index == 0 and plots:
            parts.append("<h2>Plots</h2>")
            for name, file, png in plots:
                data = base64.b64encode(png).decode("ascii")
                parts.append(f"<figure><img alt='{esc(name)}' src='data:image/png;base64,{data}'>"
                             f"<figcaption>{esc(name)}</figcaption></figure>")
    parts.append("<h2>Skipped</h2>")
    if collection.skipped:
        parts.append("<ul>" + "".join(f"<li><code>{esc(s.path)}</code>: {esc(s.reason)}</li>"
                                      for s in collection.skipped) + "</ul>")
    else:
        parts.append("<p>Nothing was skipped.</p>")
    parts.append("</body></html>")
    return "".join(parts)


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0} tr:nth-child(even) td{background:#fafafa}
figure{display:inline-block;margin:0 1em 1em 0} img{max-width:100%;border:1px solid #ddd}
.note{font-size:13px;color:#555;max-width:60em} code{font-size:13px}
summary h2{display:inline}
"""


def report_data(collection: Collection) -> dict:
    """Everything in the tables, machine-readable."""
    return {
        "format": "lm-eval-baking/report",
        "format_version": 1,
        "variants": [{
            "label": r.label, "kind": r.kind, "model": r.variant.model, "adapter": r.variant.adapter,
            "system_instruction": r.variant.system_instruction, "sources": r.sources,
            "metrics": {f"{task}:{metric}": {"value": m.value, "stderr": m.stderr,
                                             "higher_is_better": m.higher_is_better}
                        for (task, metric), m in sorted(r.metrics.items())},
            "drift_curve": r.drift_curve,
        } for r in collection.rows],
        "skipped": [{"path": s.path, "reason": s.reason} for s in collection.skipped],
    }


# ---------------------------------------------------------------------------- command line


def add_report_commands(subparsers) -> None:
    """Register `report` and `check` on the CLI's subparsers."""
    from .gate import add_check_command

    parser = subparsers.add_parser("report", help="leaderboard (Markdown + HTML) from lm_eval results and bakes")
    parser.add_argument("results", nargs="+", type=Path, metavar="RESULTS",
                        help="lm_eval --output_path folders, results_*.json files, bake or pursuit folders")
    parser.add_argument("--output", "-o", type=Path, required=True, help="folder for report.md / report.html")
    parser.add_argument("--title", default="lm-eval-baking report")
    parser.add_argument("--forgetting-threshold", type=float, default=None,
                        help="drop (%%) the forgetting heatmap marks as failing (default: 3.4)")
    parser.set_defaults(run=_run_report)
    add_check_command(subparsers)


def _run_report(args) -> None:
    report = build_report(args.results, args.output, forgetting_threshold_pct=args.forgetting_threshold,
                          title=args.title)
    header, cells = leaderboard(report.collection)
    print("\n".join(_md_row(line[:7]) for line in [header, ["---"] * len(header)] + cells))
    if report.collection.skipped:
        print(f"\nSkipped {len(report.collection.skipped)} input(s); see the report's Skipped section")
    print(f"\nWrote {report.markdown} and {report.html}")
