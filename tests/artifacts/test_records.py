"""Typed records: each JSON artefact reads through its owner, older files keep loading, newer ones are refused."""

from __future__ import annotations

import json

import pytest

from lm_eval_baking.artifacts.bake_dir import BakeDir, BakeRecord
from lm_eval_baking.constants import BAKE_FORMAT, BAKE_FORMAT_VERSION
from lm_eval_baking.errors import BakingError

BASE = {"name_or_path": "base", "sha256": "ab" * 32}


def _write(folder, record: dict):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "baking.json").write_text(json.dumps(record))
    return folder


def test_training_is_a_field_and_round_trips(tmp_path):
    training = {"requested": {"target_modules": ["attention"]}, "sizes": {"train": 9}}
    BakeRecord(kind="bake", config={"prompt": "p"}, base_model=BASE, training=training).save_pretrained(tmp_path)
    on_disk = json.loads((tmp_path / "baking.json").read_text())
    assert on_disk["training"] == training and on_disk["format_version"] == BAKE_FORMAT_VERSION
    record = BakeRecord.from_pretrained(tmp_path)
    assert record.training == training and record.extra == {}


def test_older_files_keep_loading(tmp_path):
    # No format_version, the pre-BakeRecord keys of a chain and a strength export, an unknown key kept.
    chain = _write(tmp_path / "chain", {"format": BAKE_FORMAT, "kind": "pursuit_export", "config": {"prompt": "p"},
                                        "base_model": BASE, "pursuit_export": {"rounds": [1, 2]}, "later": 1})
    strength = _write(tmp_path / "half", {"format": BAKE_FORMAT, "kind": "strength_export", "config": {},
                                          "base_model": BASE, "half_baking": {"strength": 0.5}})
    reference = _write(tmp_path / "ref", {"format": "lm-eval-baking/reference", "config": {}, "base_model": BASE})
    record = BakeDir(chain).record()
    assert (record.kind, record.chain, record.extra) == ("chain_export", {"rounds": [1, 2]}, {"later": 1})
    assert json.loads(json.dumps(record.to_dict()))["pursuit_export"] == {"rounds": [1, 2]}  # written back as read
    assert BakeDir(strength).record().strength == {"strength": 0.5}
    assert BakeDir(reference).record().kind == "reference"


@pytest.mark.parametrize("version, problem", [(BAKE_FORMAT_VERSION + 1, "newer than this lm-eval-baking reads"),
                                              ("1", "not a whole number"), (0, "not a whole number")])
def test_a_newer_or_malformed_format_version_is_refused(tmp_path, version, problem):
    folder = _write(tmp_path / "bake", {"format": BAKE_FORMAT, "format_version": version, "kind": "bake",
                                        "config": {}, "base_model": BASE})
    with pytest.raises(BakingError, match=problem):
        BakeRecord.from_pretrained(folder)
    assert BakeDir(folder).record_or_none() is None  # readers that must survive any folder skip it


def test_report_labels_read_the_record_through_its_owner(tmp_path):
    from lm_eval_baking.results.collect import variant_kind
    from lm_eval_baking.results.rows import Variant

    chain = _write(tmp_path / "chain", {"format": BAKE_FORMAT, "kind": "pursuit_export", "config": {},
                                        "base_model": BASE, "pursuit_export": {"rounds": [1, 2]}})
    strength = _write(tmp_path / "half", {"format": BAKE_FORMAT, "kind": "strength_export", "config": {},
                                          "base_model": BASE, "half_baking": {"strength": 0.25}})
    newer = _write(tmp_path / "newer", {"format": BAKE_FORMAT, "format_version": 99, "kind": "bake", "config": {},
                                        "base_model": BASE})
    assert variant_kind(Variant("m", str(chain))) == "pursued (2 rounds)"
    assert variant_kind(Variant("m", str(strength))) == "strength 0.25"
    assert variant_kind(Variant("m", str(newer))) == "adapter"
    assert variant_kind(Variant("m", str(tmp_path / "plain"))) == "adapter"


# ---------------------------------------------------------------------------- the records of runs built from bakes

def test_pursuit_record_round_trips_and_older_files_read(tmp_path):
    from lm_eval_baking.artifacts.records import PursuitRecord

    record = PursuitRecord(status="done", config={"prompt": "p"}, settings={"evaluator": "quality"},
                           base_model="base", rounds=[{"round": 0, "score": 0.5}], best_round=1)
    record.save_pretrained(tmp_path / "new")
    assert PursuitRecord.from_pretrained(tmp_path / "new") == record
    assert json.loads((tmp_path / "new" / "pursuit.json").read_text())["format"] == "lm-eval-baking/pursuit"

    older = {"format": "lm-eval-baking/pursuit", "status": "running", "config": {}, "settings": {},
             "base_model": "base", "rounds": [], "added_later": True}  # no format_version, no start
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "pursuit.json").write_text(json.dumps(older))
    read = PursuitRecord.from_pretrained(tmp_path / "old")
    assert read.start is None and read.extra == {"added_later": True}
    assert read.to_dict()["added_later"] is True


@pytest.mark.parametrize("data, problem", [
    ({"format": "lm-eval-baking/bake", "status": "done"}, "is not a lm-eval-baking/pursuit record"),
    ({"format": "lm-eval-baking/pursuit", "status": "done", "config": {}}, r"damaged \(missing settings, base_model\)"),
    ({"format": "lm-eval-baking/pursuit", "format_version": 2, "status": "done", "config": {}, "settings": {},
      "base_model": "b"}, "newer than this lm-eval-baking reads"),
])
def test_a_pursuit_record_that_does_not_read_is_one_line(tmp_path, data, problem):
    from lm_eval_baking.artifacts.records import PursuitRecord
    from lm_eval_baking.results.collect import collect

    (tmp_path / "pursuit.json").write_text(json.dumps(data))
    with pytest.raises(BakingError, match=problem) as error:
        PursuitRecord.from_pretrained(tmp_path)
    assert "\n" not in str(error.value) and PursuitRecord.from_pretrained_or_none(tmp_path) is None
    with pytest.raises(BakingError, match=problem):  # the report skips it, and says why
        collect([tmp_path])


def _minimal_records():
    from lm_eval_baking.artifacts import records
    from lm_eval_baking.results.cross_task_record import CrossTaskRecord
    from lm_eval_baking.results.forgetting import ForgettingRecord
    from lm_eval_baking.results.report import ReportRecord

    made = {
        records.PursuitRecord: dict(status="running", config={}, settings={}, base_model="b"),
        records.SequenceRecord: dict(status="running", config={"prompts": ["a", "b"]}, base_model="b"),
        records.PipelineRecord: dict(status="done", checks=[{"name": "quality", "verdict": "PASS"}], verdict="PASS"),
        records.LmEvalRunStamp: dict(command="lm_eval --tasks baking_mckl", inputs={"tasks": "ab" * 32}),
        ForgettingRecord: dict(base_model="b", adapters=["a"], tasks=["t"], max_forgetting_drop_pct=3.4,
                               per_doc={"base": {"t": {"0": 1.0}}, "a": {"t": {"0": 0.0}}}),
        CrossTaskRecord: dict(tasks=["t", "u"], scores={"base": {}}, matrix={"verdict": "PASS"}),
        ReportRecord: dict(variants=[{"label": "base"}], skipped=[]),
        records.BaseResultRecord: dict(key="cd" * 32, what="per-doc scores", inputs={"task": "t"},
                                       files={"scores.json": "ef" * 32}),
    }
    assert set(made) == set(records.JsonRecord.__subclasses__()), "every record type is tested here"
    return [cls(**kwargs) for cls, kwargs in made.items()]


@pytest.mark.parametrize("record", _minimal_records(), ids=lambda r: type(r).__name__)
def test_every_record_round_trips_and_refuses_another_format(tmp_path, record):
    record.save_pretrained(tmp_path)
    assert type(record).from_pretrained(tmp_path) == record
    data = json.loads((tmp_path / record.FILE).read_text())
    assert data["format"] == record.FORMAT and data["format_version"] == record.VERSION
    (tmp_path / record.FILE).write_text(json.dumps({**data, "format": "lm-eval-baking/other"}))
    with pytest.raises(BakingError, match=f"is not a {record.FORMAT} record"):
        type(record).from_pretrained(tmp_path)


def test_a_stamp_written_before_it_had_a_format_still_matches(tmp_path):
    from lm_eval_baking.artifacts.records import LmEvalRunStamp

    (tmp_path / "lm_eval_run.json").write_text(json.dumps({"command": "lm_eval --tasks t", "inputs": {"tasks": "x"}}))
    assert LmEvalRunStamp.from_pretrained(tmp_path) == LmEvalRunStamp(command="lm_eval --tasks t",
                                                                      inputs={"tasks": "x"})


@pytest.mark.parametrize("name, data", [
    ("forgetting.json", {"format": "lm-eval-baking/forgetting", "format_version": 3, "per_doc": {}}),
    ("cross_task.json", {"format": "lm-eval-baking/cross-task", "format_version": 2, "matrix": {}}),
])
def test_the_report_skips_a_newer_forgetting_or_cross_task_record(tmp_path, name, data):
    from lm_eval_baking.results.collect import collect

    (tmp_path / name).write_text(json.dumps(data))
    with pytest.raises(BakingError, match="newer than this lm-eval-baking reads"):
        collect([tmp_path])


def test_a_forgetting_json_written_with_threshold_pct_reads_as_max_forgetting_drop_pct(tmp_path):
    """Files written before issue 26 name the allowed drop `threshold_pct`: they read, and write back the new name."""
    from lm_eval_baking.results.forgetting import ForgettingRecord, build_report, rebuild_report

    per_doc = {None: {"t": {0: 1.0, 1: 1.0}}, "a": {"t": {0: 1.0, 1: 0.0}}}
    old = build_report("b", ["a"], ["t"], per_doc, 60.0).to_dict()
    old["threshold_pct"] = old.pop("max_forgetting_drop_pct")
    (tmp_path / "forgetting.json").write_text(json.dumps(old))
    record = ForgettingRecord.from_pretrained(tmp_path)
    assert record.max_forgetting_drop_pct == 60.0 and "threshold_pct" not in record.extra
    assert rebuild_report(record) == record  # judged again at the stored 60%, to the same verdicts
    assert "threshold_pct" not in record.to_dict() and record.to_dict()["max_forgetting_drop_pct"] == 60.0
