"""One lm_eval 0.4 results file, read and checked: any field of the wrong type skips the file, naming it.

A damaged or hand-edited file can hold any JSON where lm_eval writes an object
or a string; the code past this point (the report, the gate) can trust the types.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..utils.text import quoted


def _short(value) -> str:
    return quoted(value, 40)
from .rows import Measurement, Variant

# lm_eval's results layout ("metric,filter" keys, config.model_args, system_instruction)
# is the same across 0.4.x; 0.3 and older wrote another shape.
SUPPORTED_LM_EVAL = "0.4."


class Skip(Exception):
    """Why one input file is not used."""


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise Skip(f"unreadable ({getattr(e, 'strerror', None) or e})") from None
    except json.JSONDecodeError as e:
        raise Skip(f"not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise Skip("not usable JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a string", bool: "true or false", type(None): "null"}.get(type(data), "a number")
        raise Skip(f"not a JSON object but {kind}")
    try:
        # A \ud800-style escape loads as a lone surrogate, which no report file can be written with.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise Skip("holds a \\u escape of a lone surrogate (text that is not valid Unicode)") from None
    return data


@dataclass(frozen=True)
class ResultsFile:
    """The parts of one lm_eval 0.4 results file that the report uses, each of the type lm_eval writes."""

    variant: Variant
    results: dict[str, dict]
    """task -> {"metric,filter": value}; entries that are not objects are left out."""
    higher_is_better: dict[str, dict[str, bool | None]]
    group_subtasks: dict[str, list[str]]
    date: float | None
    """None when the file records no date: its modification time stands in."""


def parse_results_file(data: dict) -> ResultsFile:
    """Check the shape of everything read from a results file, here and only here.

    A damaged or hand-edited file can hold any JSON where lm_eval writes an
    object or a string; such a file is skipped naming the field at fault, so
    the code past this point (and the `check` gate) can trust the types.
    """
    results = data.get("results")
    if not isinstance(results, dict):
        raise Skip("not an lm_eval results file (no 'results' object)")
    if not results:
        raise Skip("its 'results' object is empty: no task was evaluated")
    version = data.get("lm_eval_version")
    if not isinstance(version, str) or not version.startswith(SUPPORTED_LM_EVAL):
        written_by = _short(version) if version else "before 0.4, or not by lm_eval (it has no lm_eval_version)"
        raise Skip(f"written by lm_eval {written_by}; this report reads lm_eval {SUPPORTED_LM_EVAL}x results: "
                    "re-run the evaluation with lm_eval 0.4.13")
    higher_is_better = _object_field(data, "higher_is_better")
    for task in list(higher_is_better):
        higher_is_better[task] = _object_field(higher_is_better, task, f"higher_is_better.{_short(task)}")
        for metric, higher in higher_is_better[task].items():
            # lm_eval writes null for a group whose members disagree on the direction.
            if higher is not None and not isinstance(higher, bool):
                raise Skip(f"higher_is_better.{_short(task)}.{_short(metric)} is {_short(higher)}, "
                            "not true, false or null")
    group_subtasks = _object_field(data, "group_subtasks")
    for group, members in group_subtasks.items():
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise Skip(f"group_subtasks.{_short(group)} is {_short(members)}, not a list of task names")
    date = data.get("date")
    if date is not None and not is_number(date):
        raise Skip(f"date is {_short(date)}, not a number (seconds since the epoch)")
    return ResultsFile(variant=_variant_of(data),
                        results={task: values for task, values in results.items() if isinstance(values, dict)},
                        higher_is_better=higher_is_better, group_subtasks=group_subtasks,
                        date=None if date is None else float(date))


def _object_field(data: dict, key: str, where: str | None = None) -> dict:
    """data[key] as a fresh dict; missing and null read as empty, any other non-object skips the file."""
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Skip(f"{where or key} is {_short(value)}, not a JSON object")
    return dict(value)


def task_metrics(values: dict, higher_is_better: dict, source: str) -> dict[str, Measurement]:
    """'acc,none': v and 'acc_stderr,none': se -> {'acc': Measurement(v, se)}; other filters keep their name."""
    metrics = {}
    for key, value in values.items():
        metric, comma, filter_name = key.partition(",")
        if not comma or metric.endswith("_stderr") or not is_number(value):
            continue
        name = metric if filter_name == "none" else f"{metric},{filter_name}"
        stderr = values.get(f"{metric}_stderr,{filter_name}")
        metrics[name] = Measurement(float(value), float(stderr) if is_number(stderr) else None,
                                    higher_is_better.get(metric), source)
    # Drift has no stderr of its own (custom aggregation); its buckets' stderrs bound it.
    drift, early, late = (metrics.get(m) for m in ("drift", "adherence_early", "adherence_late"))
    if drift and drift.stderr is None and early and late and early.stderr is not None and late.stderr is not None:
        drift.stderr = math.hypot(early.stderr, late.stderr)
    return metrics


def is_number(value) -> bool:
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
        raise Skip(f"config.model_args is {_short(model_args)}, not an object or a 'pretrained=...' string")
    model_args = model_args or {}
    model = _name_field(model_args, "pretrained", "config.model_args pretrained") or _name_field(data, "model_name")
    if not model:
        raise Skip("config.model_args names no pretrained model")
    adapter = _name_field(model_args, "peft", "config.model_args peft")
    system_instruction = data.get("system_instruction")
    if system_instruction is not None and not isinstance(system_instruction, str):
        raise Skip(f"system_instruction is {_short(system_instruction)}, not a string or null")
    return Variant(model, adapter, system_instruction or None, _reference(data, adapter))


def _reference(data: dict, adapter: str | None) -> str | None:
    """The `bake` our tasks read (task config metadata), when it differs from the adapter."""
    configs = data.get("configs")
    for config in (configs.values() if isinstance(configs, dict) else []):
        metadata = config.get("metadata") if isinstance(config, dict) else None
        bake = metadata.get("bake") if isinstance(metadata, dict) else None
        if isinstance(bake, str) and bake.isprintable() and bake and bake != adapter:
            return bake
    return None


def _name_field(data: dict, key: str, where: str | None = None) -> str | None:
    """A model or adapter name: it labels rows and error lines, and an adapter is opened as a path."""
    value = data.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.isprintable():
        raise Skip(f"{where or key} is {_short(value)}, not a model name or path on one line")
    return value


