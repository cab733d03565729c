"""The report's bake and pursuit tables and plots, from records read through their owners (BakeRecord, PursuitRecord)."""

from __future__ import annotations

from lm_eval_baking.artifacts.bake_dir import BakeRecord
from lm_eval_baking.artifacts.records import PursuitRecord
from lm_eval_baking.results.report import build_report

KL = {"per_token": 0.5, "per_token_stderr": 0.05}


def test_bake_and_pursuit_tables_and_plots_from_typed_records(tmp_path):
    runs = tmp_path / "runs"
    BakeRecord(kind="bake", config={"prompt": "You are a pirate."}, base_model={"name_or_path": "base"},
               kl={"unprompted_base": {"per_token": 2.0, "per_token_stderr": 0.1}, "per_epoch": [
                   {"epoch": 1, "heldout_kl": KL}], "ratio_to_unprompted": 0.25},
               performance={"seconds": {"training": 3.0}}).save_pretrained(runs / "pirate")
    PursuitRecord(status="done", config={}, settings={"evaluator": "quality"}, base_model="base",
                  rounds=[{"round": 0, "score": 0.1}, {"round": 1, "score": 0.6, "heldout_kl": 0.5}], best_round=1,
                  stop_reason_text="max rounds").save_pretrained(runs / "pursuit")

    report = build_report([runs], tmp_path / "report")
    page = report.markdown.read_text()
    assert "You are a pirate." in page and "25.0%" in page and "3 s" in page  # the bakes table
    assert "score: quality (higher is better); stopped: max rounds" in page and "1 (best)" in page
    assert (report.output / "kl_per_epoch.png").is_file() and (report.output / "pursuit_rounds.png").is_file()
    assert report.collection.skipped == []
