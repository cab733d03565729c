"""The main job, the leaderboard report and the `check` gate, on real lm_eval output.

One module fixture runs `run_demo` on the tiny model: a tiny bake and pursuit,
drift conversations, then the real `lm_eval` CLI once per variant (base,
prompted base, baked, pursued) on all three of our tasks. Everything else
reads those files. The tiny model is random, so the numbers mean nothing; the
tests check shapes, labels, verdicts and exit codes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from lm_eval_baking.cli import main
from lm_eval_baking.workflows.config import DemoSettings
from lm_eval_baking.workflows.demo import _input_hashes, run_demo
from lm_eval_baking.errors import BakingError
from lm_eval_baking.results.collect import collect
from lm_eval_baking.results.report import build_report
from lm_eval_baking.results.rows import FORGETTING

from conftest import PIRATE, tiny_config


def _demo_settings(root: Path, tiny_model_dir, question_file) -> DemoSettings:
    bake_settings = asdict(tiny_config(tiny_model_dir, question_file))
    for key in ("prompt", "model"):
        bake_settings.pop(key)
    # 25 turns of 2 tokens fit the tiny model's 512-token context (the demo's default is 30 turns).
    return DemoSettings(model=str(tiny_model_dir), adapters=root / "adapters", reports=root / "reports",
                        bake_settings=bake_settings, pursuit_max_new_tokens=4, drift_turns=25,
                        drift_probes_at=(1, 25), drift_max_new_tokens=2, forgetting_docs=3, batch_size=8)


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_model_dir, question_file):
    settings = _demo_settings(tmp_path_factory.mktemp("demo"), tiny_model_dir, question_file)
    result = run_demo(settings, progress=False)
    return settings, result


def _results_file(settings: DemoSettings, variant: str, evaluation: str = "mckl") -> Path:
    (path,) = (settings.lm_eval_dir / variant / evaluation).rglob("results_*.json")
    return path


def _cli(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------- the main job


def test_demo_runs_lm_eval_for_every_variant_and_writes_the_report(demo):
    settings, result = demo
    for variant in ("base", "prompted-base", "baked", "pursued"):
        tasks = set()
        for evaluation in ("mckl", "behaviour"):
            data = json.loads(_results_file(settings, variant, evaluation).read_text())
            assert data["lm_eval_version"].startswith("0.4.")
            tasks |= set(data["results"])
        assert tasks >= {"baking_mckl", "baking_persona_drift", "baking_forgetting"}
    prompted = json.loads(_results_file(settings, "prompted-base").read_text())
    assert prompted["system_instruction"] == PIRATE
    assert result.report == settings.report_dir / "report.html" and result.report.is_file()
    assert (settings.report_dir / "report.md").is_file()


def test_a_second_demo_run_reuses_every_step(demo):
    settings, first = demo
    before = {p: p.stat().st_mtime_ns for p in settings.lm_eval_dir.rglob("results_*.json")}
    again = run_demo(settings, progress=False)
    evaluations = {f"lm_eval: {variant} ({evaluation})" for variant in ("base", "prompted base", "baked", "pursued")
                   for evaluation in ("mckl", "behaviour")}
    assert {"bake", "pursuit", "drift conversations"} | evaluations <= set(again.reused)
    assert {p: p.stat().st_mtime_ns for p in settings.lm_eval_dir.rglob("results_*.json")} == before


def test_a_changed_task_definition_invalidates_the_reused_evaluations(tmp_path, monkeypatch):
    import lm_eval_baking.workflows.demo

    tasks = tmp_path / "tasks"
    (tasks / "baking_forgetting").mkdir(parents=True)
    member = tasks / "baking_forgetting" / "baking_forgetting.yaml"
    member.write_text("task:\n  - a\n")
    monkeypatch.setattr(lm_eval_baking.workflows.demo, "tasks_path", lambda: tasks)
    settings = DemoSettings(adapters=tmp_path / "adapters", reports=tmp_path / "reports")

    before = _input_hashes(settings, None)
    assert _input_hashes(settings, None) == before
    member.write_text("task:\n  - a\n  - b\n")
    assert _input_hashes(settings, None)["tasks"] != before["tasks"]


# ---------------------------------------------------------------------------- the report


def test_report_has_one_row_per_variant_with_every_column(demo):
    settings, _ = demo
    collection = collect([settings.lm_eval_dir, settings.adapters])
    kinds = {row.kind: row for row in collection.rows}
    assert len(collection.rows) == 4 and {"base", "prompted base", "baked"} <= set(kinds)
    assert any(kind.startswith("pursued (") for kind in kinds)
    prompted = kinds["prompted base"]
    assert prompted.label == "base + prompt" and prompted.variant.system_instruction == PIRATE
    assert abs(prompted.get("kl").value) < 1e-3 and prompted.get("quality").value == pytest.approx(1.0)
    baked = kinds["baked"]
    assert baked.label.endswith("adapters/pirate") and baked.get("kl").stderr is not None
    for row in collection.rows:
        for column in ("kl", "quality", "adherence", "drift", "forgetting_acc"):
            assert row.get(column) is not None, (row.label, column)
        assert set(row.drift_curve) == {1, 25}
    assert kinds["base"].get(FORGETTING) is None and baked.get(FORGETTING) is not None
    assert [len(collection.bakes), len(collection.pursuits)] >= [3, 1]  # the bake and the pursuit rounds
    assert collection.skipped == []


def test_report_files_markdown_html_and_plots(demo, tmp_path):
    settings, _ = demo
    report = build_report([settings.lm_eval_dir, settings.adapters], tmp_path / "report")
    markdown = report.markdown.read_text()
    assert "| base + prompt | prompted base |" in markdown and "MC-KL / token" in markdown
    for plot in ("kl_per_epoch.png", "pursuit_rounds.png", "drift_by_turn.png", "forgetting_1.png"):
        assert (tmp_path / "report" / plot).stat().st_size > 1000
        assert f"]({plot})" in markdown
    page = report.html.read_text()
    assert page.count("src='data:image/png;base64,") == 4
    assert "http://" not in page and "https://" not in page, "the page must not fetch anything"
    assert "Nothing was skipped." in page


def test_report_lists_what_it_skipped_and_why(demo, tmp_path):
    settings, _ = demo
    runs = tmp_path / "runs"
    shutil.copytree(settings.lm_eval_dir, runs)
    baked = json.loads(_results_file(settings, "baked").read_text())
    old = dict(baked, lm_eval_version="0.3.0")
    (runs / "old").mkdir()
    (runs / "old" / "results_old.json").write_text(json.dumps(old))
    (runs / "broken").mkdir()
    (runs / "broken" / "results_broken.json").write_text('{"results": ')
    no_kl = json.loads(json.dumps(baked))
    del no_kl["results"]["baking_mckl"]["kl_per_token,none"]
    no_kl["config"]["model_args"]["peft"] = "elsewhere/adapter"
    (runs / "no-kl").mkdir()
    (runs / "no-kl" / "results_no-kl.json").write_text(json.dumps(no_kl))

    report = build_report([runs], tmp_path / "report")

    reasons = {Path(s.path).parent.name: s.reason for s in report.collection.skipped}
    assert "lm_eval 0.3.0" in reasons["old"] and "0.4.13" in reasons["old"]
    assert "not valid JSON" in reasons["broken"]
    assert "reports no kl_per_token" in reasons["no-kl"]
    skipped_section = report.markdown.read_text().split("## Skipped")[1]
    for folder in ("old", "broken", "no-kl"):
        assert f"{folder}/results_" in skipped_section
    assert report.collection.row("elsewhere/adapter").get("kl") is None  # the row stays, its cell is empty


def test_report_command_prints_the_leaderboard_and_the_paths(demo, tmp_path, capsys):
    settings, _ = demo
    code, out, _ = _cli(["report", settings.lm_eval_dir, "--output", tmp_path / "r"], capsys)
    assert code == 0
    assert "| base + prompt | prompted base |" in out and str(tmp_path / "r" / "report.html") in out


@pytest.mark.parametrize("make_input, message", [
    (lambda tmp: tmp / "empty", "no lm_eval results (results_*.json) or bake records under"),
    (lambda tmp: tmp / "missing", "does not exist"),
])
def test_report_bad_inputs_are_one_clear_line(tmp_path, capsys, make_input, message):
    (tmp_path / "empty").mkdir()
    code, out, err = _cli(["report", make_input(tmp_path), "--output", tmp_path / "r"], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_report_refuses_to_replace_a_folder_of_other_files(demo, tmp_path):
    settings, _ = demo
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(BakingError, match="holds other files"):
        build_report([settings.lm_eval_dir], tmp_path)
    with pytest.raises(BakingError, match="holds the input"):
        build_report([settings.lm_eval_dir], settings.reports)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


# ---------------------------------------------------------------------------- the gate


def _regressed(settings: DemoSettings, root: Path) -> Path:
    """The baked variant's results with a collapsed bake: quality down, KL up (drift and forgetting unchanged)."""
    data = json.loads(_results_file(settings, "baked").read_text())
    data["results"]["baking_mckl"].update({"quality,none": -3.0, "kl_per_token,none": 9.0})
    path = root / "regressed" / "results_regressed.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    shutil.copy(_results_file(settings, "baked", "behaviour"), path.parent / "results_behaviour.json")
    return path.parent


def test_check_passes_on_the_demo_results_through_the_real_cli(demo):
    settings, _ = demo
    command = [str(Path(sys.executable).with_name("lm-eval-baking")), "check", str(settings.lm_eval_dir),
               "--max-kl", "1.0", "--min-adherence", "0", "--max-forgetting", "100",
               "--baseline", str(settings.lm_eval_dir), "--tolerance", "0"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "FAIL" not in run.stdout and run.stdout.rstrip().endswith("PASS")
    assert "kl (baseline)" in run.stdout
    # Against itself every change is paired and exactly 0: the gate passes on nothing changed, not on noise.
    assert "drift (baseline)" in run.stdout and "quality (baseline)" in run.stdout


def test_check_fails_a_regressed_results_file_through_the_real_cli(demo, tmp_path):
    settings, _ = demo
    command = [str(Path(sys.executable).with_name("lm-eval-baking")), "check", str(_regressed(settings, tmp_path)),
               "--max-kl", "1.0", "--baseline", str(settings.lm_eval_dir), "--tolerance", "5%"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    *table, summary = run.stdout.strip().splitlines()
    assert " 3 failed, " in summary and summary.endswith(": FAIL"), summary
    failing = [line for line in table if "FAIL" in line.split()]
    assert any(line.startswith("kl ") for line in failing)
    assert any(line.startswith("quality (baseline)") for line in failing)
    assert all("adapters/pirate" in line for line in failing), run.stdout


def test_check_table_names_metric_variant_value_and_limit(demo, capsys):
    settings, _ = demo
    code, out, _ = _cli(["check", settings.lm_eval_dir, "--min-quality", "0.99"], capsys)
    header, rule, *rows = out.strip().splitlines()[:4]
    assert header.split() == ["metric", "variant", "value", "95%", "CI", "limit", "verdict", "note"]
    # The tiny model's quality is noise around 0: its CI may reach 0.99 (inconclusive), never pass it.
    verdict = next(v for v in ("FAIL", "INCONCLUSIVE") if v in rows[0].split())
    assert rows[0].startswith("quality") and "≥ 0.99" in rows[0] and code == {"FAIL": 1, "INCONCLUSIVE": 3}[verdict]
    code, out, _ = _cli(["check", settings.lm_eval_dir, "--min", "quality=-100", "--variant", "base + prompt"], capsys)
    assert code == 0 and "base + prompt" in out


@pytest.mark.parametrize("args, message", [
    (["--min-quality", "0.9", "--max", "quality=0.5"], "contradictory thresholds"),
    (["--max-kl", "0.1", "--max", "kl=0.2"], "contradictory thresholds"),
    (["--min-adherence", "1.5"], "can never pass"),
    (["--max-kl", "abc"], "needs a finite number"),
    (["--min", "no_such_task:acc=0.5"], "no no_such_task:acc in the results"),
    (["--max-kl", "1", "--tolerance", "0.1"], "--tolerance applies to a --baseline"),
    (["--max-kl", "1", "--variant", "nope"], "no variant 'nope'"),
    ([], "nothing to check"),
])
def test_check_bad_input_is_exit_2_and_one_line(demo, capsys, args, message):
    settings, _ = demo
    code, out, err = _cli(["check", settings.lm_eval_dir, *args], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_check_refuses_an_unreadable_results_file(demo, tmp_path, capsys):
    settings, _ = demo
    runs = tmp_path / "runs"
    shutil.copytree(settings.lm_eval_dir, runs)
    (runs / "results_truncated.json").write_text('{"results": {')
    code, _, err = _cli(["check", runs, "--max-kl", "1"], capsys)
    assert code == 2 and "results_truncated.json cannot be used (not valid JSON" in err


# ---------------------------------------------------------------------------- a real browser

# Runs in the page once everything has loaded: writes how many images decoded.
_IMAGE_PROBE = """<script>
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const loaded = images.filter(img => img.complete && img.naturalWidth > 0).length;
  document.body.setAttribute('data-images', loaded + '/' + images.length);
});
</script></body>"""


def test_report_renders_in_headless_chromium_with_every_image_loaded(demo, tmp_path):
    import matplotlib.image
    import numpy as np

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is not on PATH: run `make browser` (make test does it)"
    settings, _ = demo
    page = tmp_path / "probe.html"
    page.write_text(settings.report_dir.joinpath("report.html").read_text().replace("</body>", _IMAGE_PROBE))
    browser = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]

    dom = subprocess.run(browser + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-images="4/4"' in dom.stdout, dom.stdout[:500]

    shot = tmp_path / "report.png"
    run = subprocess.run(browser + ["--window-size=1280,2200", f"--screenshot={shot}",
                                    settings.report_dir.joinpath("report.html").as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2200, 1280)
    assert pixels[..., :3].std() > 0.05, "the screenshot is blank"
    # The plots are colourful; text and tables alone are grey.
    assert (np.ptp(pixels[..., :3], axis=-1) > 0.3).mean() > 0.001
