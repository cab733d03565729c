"""Collecting a report's inputs: lm_eval results files, bake/pursuit records, forgetting reports.

Inputs are found recursively under the paths given:

    results_*.json                       lm_eval `--output_path` results (any number of runs)
    samples_baking_persona_drift_*.jsonl lm_eval `--log_samples` output (drift by turn)
    baking.json                          a bake (KL per epoch); pursuit rounds and exports too
    pursuit.json                         a prompt pursuit (score per round)
    forgetting.json                      `lm-eval-baking forgetting` output
    cross_task.json                      `lm-eval-baking cross-task` output (the N×N matrix)

Anything that cannot be used (unreadable file, another lm_eval version, a task
without its metric) is listed under "Skipped" with the reason; the report
itself never fails on one bad file.
"""

from __future__ import annotations

from pathlib import Path

from ..artifacts.bake_dir import BakeRecord
from ..artifacts.records import PursuitRecord
from ..constants import BAKE_RECORD, CROSS_TASK_RECORD, FORGETTING_RECORD, PURSUIT_RECORD
from ..core.verdicts import MAX_FORGETTING_DROP_PCT
from ..errors import BakingError
from ..utils.hashing import sha256_text
from .cross_task_record import CrossTaskRecord
from .derived import add_derived
from .forgetting import ForgettingRecord
from .results_files import Skip, is_number, parse_results_file, read_json, task_metrics
from .rows import (
    DRIFT_TASK, FORGETTING_GROUP, FORGETTING_METRIC, HEADLINE_COLUMNS, Collection, Measurement, Row, Skipped,
    Variant,
)
from .samples import SamplesError, read_samples, samples_file

# Doc fields the drift statistics need (which persona, conversation and turn a probe belongs to).
_DRIFT_DOC_FIELDS = ("persona", "conversation", "turn")


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
    if name in (BAKE_RECORD, PURSUIT_RECORD, FORGETTING_RECORD, CROSS_TASK_RECORD):
        return name.removesuffix(".json")
    return None


def collect(paths, *, max_forgetting_drop_pct: float = MAX_FORGETTING_DROP_PCT) -> Collection:
    """Read every input under `paths` into variant rows and records; bad files go to `skipped`."""
    found = input_files(paths)
    files = [(f, kind) for f in found if (kind := _kind_of_file(f))]
    if not files:
        # Nothing of a known name: a .json named on the command line is read as results whatever its name,
        # so that what is wrong with it gets said. (Only then: a glob can name samples and adapter configs.)
        named = {Path(p) for p in paths if Path(p).is_file()}
        files = [(f, "results") for f in found if f in named and f.suffix == ".json"]
    if not files:
        shown = ", ".join(map(str, paths))
        raise BakingError(f"no lm_eval results (results_*.json) or bake records under {shown}; run lm_eval with "
                          "--output_path DIR (or `lm-eval-baking bake`) first and pass that folder")
    rows: dict[Variant, Row] = {}
    collection = Collection(rows=[], bakes=[], pursuits=[], forgetting_reports=[], skipped=[], subtasks={})
    for path, kind in files:
        try:
            if kind == "baking":
                collection.bakes.append((str(path.parent), _owned_record(BakeRecord, path)))
                continue
            if kind == "pursuit":
                collection.pursuits.append((str(path.parent), _owned_record(PursuitRecord, path)))
                continue
            if kind == "cross_task":
                record = _owned_record(CrossTaskRecord, path)
                if not isinstance(record.matrix, dict) or not record.matrix:
                    raise Skip("a cross-task report without its matrix; rerun `lm-eval-baking cross-task`")
                collection.cross_task_reports.append((str(path.parent), record))
                continue
            if kind == "forgetting":
                record = _owned_record(ForgettingRecord, path)
                if not isinstance(record.per_doc, dict):
                    raise Skip("a forgetting report without its per-doc scores; rerun `lm-eval-baking forgetting`")
                collection.forgetting_reports.append((str(path.parent), record))
                continue
            _add_results(path, read_json(path), rows, collection)
        except Skip as skip:
            collection.skipped.append(Skipped(str(path), str(skip)))
    _add_forgetting_reports(rows, collection)
    add_derived(rows, collection, max_forgetting_drop_pct)
    collection.rows = _label_rows(rows)
    if not collection.rows and not collection.bakes and not collection.pursuits and not collection.cross_task_reports:
        if len(collection.skipped) == 1:
            raise BakingError(f"{collection.skipped[0].path} cannot be used: {collection.skipped[0].reason}; pass "
                              "lm_eval 0.4 results (results_*.json) or their --output_path folder")
        reasons = "; ".join(f"{s.path}: {s.reason}" for s in collection.skipped[:3])
        raise BakingError(f"nothing usable in {', '.join(map(str, paths))} ({reasons}); pass lm_eval 0.4 results")
    return collection


def _owned_record(record_type, path: Path):
    """A record of ours read through its owner (BakeRecord, PursuitRecord, ForgettingRecord...): format,
    version and legacy keys are handled there; what it refuses is skipped with its reason."""
    try:
        return record_type.from_pretrained(path.parent)
    except BakingError as e:
        raise Skip(str(e)) from None


def _add_results(path: Path, data: dict, rows: dict[Variant, Row], collection: Collection) -> None:
    run = parse_results_file(data)
    variant = run.variant
    date = run.date if run.date is not None else path.stat().st_mtime
    measured = {task: metrics for task, values in run.results.items()
                if (metrics := task_metrics(values, run.higher_is_better.get(task, {}), str(path)))}
    # Checked before the row exists, so a skipped file leaves no empty row behind.
    if not measured:
        raise Skip("holds no numeric metric values")
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
        row.samples.pop(task, None)
        _add_samples(path, task, row, collection)
    for column in HEADLINE_COLUMNS:
        if column.task in run.results and (column.task, column.metric) not in row.metrics:
            collection.skipped.append(Skipped(str(path), f"{column.task} reports no {column.metric} "
                                              f"(or it is not a number); its '{column.title}' cell stays empty",
                                              whole_file=False))


def _add_samples(results_path: Path, task: str, row: Row, collection: Collection) -> None:
    """The task's per-doc output written with this results file (`--log_samples`), when there is one."""
    path = samples_file(results_path, task)
    if not path.is_file():
        return
    try:
        row.samples[task] = read_samples(path, _DRIFT_DOC_FIELDS if task == DRIFT_TASK else ())
    except SamplesError as e:
        collection.skipped.append(Skipped(str(path), f"per-doc output not used ({e})", whole_file=False))


def _add_forgetting_reports(rows: dict[Variant, Row], collection: Collection) -> None:
    """Rows for models scored by `lm-eval-baking forgetting`: their per-doc scores, as if from --log_samples.

    An lm_eval run of the same tasks on the same variant is preferred (it carries lm_eval's stderr).
    """
    for source, report in collection.forgetting_reports:
        try:
            base_model = str(report.base_model)
            for name, per_task in report.per_doc.items():
                variant = Variant(base_model) if name == "base" else Variant(base_model, str(name))
                row = rows.setdefault(variant, Row(variant))
                for task, docs in per_task.items():
                    if task not in row.samples:
                        row.samples[task] = {int(d): {"hash": None, FORGETTING_METRIC: float(v)} for d, v in docs.items()}
                means = [sum(d.values()) / len(d) for d in per_task.values() if d]
                key = (FORGETTING_GROUP, FORGETTING_METRIC)
                if key not in row.metrics and means:
                    row.metrics[key] = Measurement(sum(means) / len(means), None, True, source)
                    row.sources.append(source)
            collection.subtasks.setdefault(FORGETTING_GROUP, list(report.tasks))
        except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError) as e:
            collection.skipped.append(Skipped(f"{source}/{FORGETTING_RECORD}", f"incomplete forgetting report ({e})"))


# ---------------------------------------------------------------------------- variant labels


def _plain(variant: Variant) -> str:
    label = "base" if variant.adapter is None else display_path(variant.adapter)
    label += " + prompt" if variant.system_instruction else ""
    return label + (f" (vs {Path(variant.reference).name})" if variant.reference else "")


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
    record = BakeRecord.from_pretrained_or_none(adapter)
    if record is None:
        kind = "adapter"
    elif record.kind == "chain_export":
        rounds = record.chain.get("rounds") if isinstance(record.chain, dict) else None
        kind = f"pursued ({_count(rounds, 'round')})" if isinstance(rounds, list) else "pursued"
    elif record.kind == "strength_export":
        strength = record.strength.get("strength") if isinstance(record.strength, dict) else None
        kind = f"strength {format(strength, 'g') if is_number(strength) else '–'}"
    elif adapter.name.startswith("round-") and (adapter.parent / PURSUIT_RECORD).is_file():
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
                                                   r.variant.system_instruction or "", r.variant.reference or ""))
    for row in ordered:
        row.kind = variant_kind(row.variant)
        row.label = (f"{Path(row.variant.model).name}: " if several_models else "") + _plain(row.variant)
    seen: dict[str, int] = {}
    for row in ordered:  # two system instructions on one adapter: tell them apart
        seen[row.label] = seen.get(row.label, 0) + 1
    for row in ordered:
        if seen[row.label] > 1 and row.variant.system_instruction:
            row.label += f" #{sha256_text(row.variant.system_instruction)[:6]}"
    return ordered


