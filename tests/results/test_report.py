"""The leaderboard report and the `check` gate, on real lm_eval output.

Everything reads the files of one run of the tiny pipeline (conftest's `tiny_pipeline`): its bakes and pursuits,
and the real `lm_eval` CLI on our three tasks for the exported adapter (drift and forgetting also for the base
and the prompted base). The tiny
model is random, so the numbers mean nothing; the tests check shapes, labels, verdicts and exit codes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lm_eval_baking.cli import main
from lm_eval_baking.errors import BakingError
from lm_eval_baking.results.collect import collect
from lm_eval_baking.results.report import build_report
from lm_eval_baking.results.rows import FORGETTING

from conftest import FRENCH


@pytest.fixture(scope="module")
def run(tiny_pipeline):
    """The pipeline's output folder and result."""
    recipe, result = tiny_pipeline
    return recipe.output, result


def _results_file(output: Path, *parts: str) -> Path:
    (path,) = output.joinpath("lm_eval", *parts).rglob("results_*.json")
    return path


def _cli(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_changed_task_definition_invalidates_the_reused_evaluations(tmp_path, monkeypatch):
    import lm_eval_baking.workflows.lm_eval_runs as runs

    tasks = tmp_path / "tasks"
    (tasks / "baking_forgetting").mkdir(parents=True)
    member = tasks / "baking_forgetting" / "baking_forgetting.yaml"
    member.write_text("task:\n  - a\n")
    monkeypatch.setattr(runs, "tasks_path", lambda: tasks)
    before = runs.input_hashes([])
    assert runs.input_hashes([]) == before
    member.write_text("task:\n  - a\n  - b\n")
    assert runs.input_hashes([])["tasks"] != before["tasks"]


# ---------------------------------------------------------------------------- the report


def test_report_has_one_row_per_variant_with_every_column(run):
    output, result = run
    collection = collect([output / "lm_eval", output / "stages"])
    labels = {row.label: row for row in collection.rows}
    # MC-KL against each prompt's reference and against all prompts joined is its own evaluation of the adapter
    # (the base and the prompted base score 0 and 1 by definition: baking_mckl's own tests); drift adds the
    # prompted base (french); forgetting has the plain base and the adapter rows.
    assert len(collection.rows) == 6, [(r.label, r.kind) for r in collection.rows]
    assert {label.rsplit(" (vs ", 1)[-1] for label in labels if "(vs " in label} == {"pirate)", "french)", "joint)"}, list(labels)
    prompted = labels["base + prompt (vs french)"]
    assert prompted.variant.system_instruction == FRENCH and prompted.kind == "prompted base" and prompted.drift
    adapter = next(row for label, row in labels.items() if label.endswith("adapter (vs french)"))
    assert adapter.get("kl").stderr is not None and adapter.get("quality") is not None
    assert adapter.drift and adapter.drift["french"]["conversations"] == 2 and set(adapter.drift_curve) == {1, 25}
    forgetting = next(row for label, row in labels.items() if label.endswith("adapter"))
    assert forgetting.get(FORGETTING) is not None and forgetting.get(FORGETTING).verdict in (
        "PASS", "FAIL", "INCONCLUSIVE")
    assert labels["base"].get(FORGETTING) is None
    assert len(collection.bakes) >= 5 and len(collection.pursuits) == 4  # every round's bake; one pursuit per stage
    assert collection.drift_pairs and collection.skipped == []


def test_report_files_markdown_html_and_plots(run, tmp_path):
    output, _ = run
    report = build_report([output / "lm_eval", output / "stages"], tmp_path / "report")
    markdown = report.markdown.read_text()
    assert "| base + prompt (vs french) | prompted base |" in markdown and "MC-KL / token" in markdown
    assert "## Forgetting, paired per doc" in markdown and "## Persona drift" in markdown
    for plot in ("kl_per_epoch.png", "pursuit_rounds.png", "drift_by_turn.png", "forgetting_1.png"):
        assert (tmp_path / "report" / plot).stat().st_size > 1000
        assert f"]({plot})" in markdown
    page = report.html.read_text()
    assert page.count("src='data:image/png;base64,") == 4
    assert "http://" not in page and "https://" not in page, "the page must not fetch anything"
    assert "Nothing was skipped." in page


def test_report_lists_what_it_skipped_and_why(run, tmp_path):
    output, _ = run
    runs = tmp_path / "runs"
    shutil.copytree(output / "lm_eval", runs)
    baked = json.loads(_results_file(output, "mckl", "pirate", "adapter").read_text())
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
    # The row stays, its cell is empty.
    assert report.collection.row("elsewhere/adapter (vs pirate)").get("kl") is None


def test_report_command_prints_the_leaderboard_and_the_paths(run, tmp_path, capsys):
    output, _ = run
    code, out, _ = _cli(["report", output / "lm_eval", "--output", tmp_path / "r"], capsys)
    assert code == 0
    assert "| base + prompt (vs french) | prompted base |" in out and str(tmp_path / "r" / "report.html") in out


@pytest.mark.parametrize("make_input, message", [
    (lambda tmp: tmp / "empty", "no lm_eval results (results_*.json) or bake records under"),
    (lambda tmp: tmp / "missing", "does not exist"),
])
def test_report_bad_inputs_are_one_clear_line(tmp_path, capsys, make_input, message):
    (tmp_path / "empty").mkdir()
    code, out, err = _cli(["report", make_input(tmp_path), "--output", tmp_path / "r"], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_report_refuses_to_replace_a_folder_of_other_files(run, tmp_path):
    output, _ = run
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(BakingError, match="lm-eval-baking did not make"):
        build_report([output / "lm_eval"], tmp_path)
    with pytest.raises(BakingError, match="holds the input"):
        build_report([output / "lm_eval"], output)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


# ---------------------------------------------------------------------------- the gate


def _regressed(output: Path, root: Path) -> Path:
    """The adapter's MC-KL results with a collapsed bake: quality down, KL up (no per-doc output)."""
    data = json.loads(_results_file(output, "mckl", "pirate", "adapter").read_text())
    data["results"]["baking_mckl"].update({"quality,none": -3.0, "kl_per_token,none": 9.0})
    path = root / "regressed" / "results_regressed.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    return path.parent


def test_check_passes_on_the_same_results_as_its_baseline_through_the_real_cli(run):
    output, _ = run
    results = output / "lm_eval"
    command = [str(Path(sys.executable).with_name("lm-eval-baking")), "check", str(results),
               "--max-kl", "100", "--min-adherence", "0", "--baseline", str(results), "--tolerance", "0"]
    run_ = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run_.returncode == 3, run_.stdout + run_.stderr
    assert "FAIL" not in run_.stdout and run_.stdout.rstrip().endswith("INCONCLUSIVE")
    # Against itself every change is paired and exactly 0: the gate passes on nothing changed, not on noise.
    assert "kl (baseline)" in run_.stdout and "quality (baseline)" in run_.stdout and "drift (baseline)" in run_.stdout
    # Except the tiny bake's quality: its base KL is about 0, so some resamples have no quality and its change
    # no CI (issue 22: a change without a finite CI is INCONCLUSIVE, never PASS).
    *table, _summary = run_.stdout.strip().splitlines()
    inconclusive = [line for line in table if "INCONCLUSIVE" in line.split()]
    assert inconclusive and all(line.startswith("quality (baseline)") and "no 95% CI" in line for line in inconclusive)


def test_check_fails_a_regressed_results_file_through_the_real_cli(run, tmp_path):
    output, _ = run
    command = [str(Path(sys.executable).with_name("lm-eval-baking")), "check", str(_regressed(output, tmp_path)),
               "--max-kl", "1.0", "--baseline", str(output / "lm_eval"), "--tolerance", "5%"]
    run_ = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run_.returncode == 1, run_.stdout + run_.stderr
    *table, summary = run_.stdout.strip().splitlines()
    assert summary.endswith(": FAIL"), summary
    failing = [line for line in table if "FAIL" in line.split()]
    assert any(line.startswith("kl ") for line in failing)
    assert all("adapter (vs pirate)" in line for line in failing), run_.stdout
    # Quality -3.0 without per-doc output has no CI of its change: INCONCLUSIVE, not a FAIL on the value alone.
    quality = [line for line in table if line.startswith("quality (baseline)") and "adapter (vs pirate)" in line]
    assert quality and all("INCONCLUSIVE" in line.split() and "no 95% CI" in line for line in quality)


def test_check_table_names_metric_variant_value_and_limit(run, capsys):
    output, _ = run
    code, out, _ = _cli(["check", output / "lm_eval", "--min-quality", "0.99"], capsys)
    header, rule, *rows = out.strip().splitlines()[:4]
    assert header.split() == ["metric", "variant", "value", "95%", "CI", "limit", "verdict", "note"]
    # The tiny model's quality is noise around 0: its CI may reach 0.99 (inconclusive), never pass it.
    verdict = next(v for v in ("FAIL", "INCONCLUSIVE") if v in rows[0].split())
    assert rows[0].startswith("quality") and "≥ 0.99" in rows[0] and code == {"FAIL": 1, "INCONCLUSIVE": 3}[verdict]
    pirate = next(row.label for row in collect([output / "lm_eval"]).rows if row.label.endswith("(vs pirate)"))
    code, out, _ = _cli(["check", output / "lm_eval", "--min", "quality=-100", "--variant", pirate], capsys)
    assert code in (0, 3) and pirate in out and "(vs french)" not in out and "(vs joint)" not in out
    code, out, _ = _cli(["check", output / "lm_eval", "--min-quality", "0.99", "--inconclusive", "fail"], capsys)
    assert code == 1


def test_max_forgetting_needs_per_doc_output(run, tmp_path, capsys):
    output, _ = run
    runs = tmp_path / "runs"
    shutil.copytree(output / "lm_eval" / "forgetting", runs)
    for samples in runs.rglob("samples_*.jsonl"):
        samples.unlink()
    code, _, err = _cli(["check", runs, "--max-forgetting-drop-pct", "3.4"], capsys)
    assert code == 2 and "needs per-doc output" in err and "--log_samples" in err
    code, out, _ = _cli(["check", output / "lm_eval" / "forgetting", "--max-forgetting-drop-pct", "3.4"], capsys)
    assert code in (0, 1, 3) and "paired over" in out


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
def test_check_bad_input_is_exit_2_and_one_line(run, capsys, args, message):
    output, _ = run
    code, out, err = _cli(["check", output / "lm_eval", *args], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_check_refuses_an_unreadable_results_file(run, tmp_path, capsys):
    output, _ = run
    runs = tmp_path / "runs"
    shutil.copytree(output / "lm_eval", runs)
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


def test_report_renders_in_headless_chromium_with_every_image_loaded(run, tmp_path):
    import matplotlib.image
    import numpy as np

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is not on PATH: run `make browser` (make test does it)"
    output, result = run
    page = tmp_path / "probe.html"
    page.write_text(result.report.read_text().replace("</body>", _IMAGE_PROBE))
    browser = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]

    dom = subprocess.run(browser + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-images="4/4"' in dom.stdout, dom.stdout[:500]

    shot = tmp_path / "report.png"
    taken = subprocess.run(browser + ["--window-size=1280,2200", f"--screenshot={shot}", result.report.as_uri()],
                           capture_output=True, text=True, timeout=120)
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2200, 1280)
    assert pixels[..., :3].std() > 0.05, "the screenshot is blank"
    # The plots are colourful; text and tables alone are grey.
    assert (np.ptp(pixels[..., :3], axis=-1) > 0.3).mean() > 0.001
