"""One name, one default: the allowed forgetting drop is --max-forgetting-drop-pct everywhere; its old names are
refused with one line that names the new one."""

from __future__ import annotations

import pytest

from lm_eval_baking.cli import main


@pytest.mark.parametrize("argv, old", [
    (["check", "{tmp}", "--max-forgetting", "3"], "--max-forgetting"),
    (["check-matrix", "{tmp}", "--threshold", "3"], "--threshold"),
    (["report", "{tmp}", "--output", "{tmp}/r", "--forgetting-threshold", "3"], "--forgetting-threshold"),
    (["forgetting", "--adapters", "{tmp}", "--output", "{tmp}/f", "--threshold", "3"], "--threshold"),
    (["cross-task", "--tasks", "a", "b", "--output", "{tmp}/c", "--threshold"], "--threshold"),
])
def test_an_old_name_of_the_forgetting_drop_is_refused_with_the_new_one(argv, old, tmp_path, capsys):
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == f"lm-eval-baking: error: {old} was renamed --max-forgetting-drop-pct; pass --max-forgetting-drop-pct instead"
    assert not (tmp_path / "r").exists() and not (tmp_path / "f").exists()


@pytest.mark.parametrize("command, cls", [
    ("report", "lm_eval_baking.results.settings:ReportSettings"),
    ("check", "lm_eval_baking.results.settings:CheckSettings"),
    ("check-matrix", "lm_eval_baking.results.settings:CheckMatrixSettings"),
    ("pipeline", "lm_eval_baking.workflows.settings:PipelineSettings"),
    ("forgetting", "lm_eval_baking.evals.config:ForgettingSettings"),
    ("cross-task", "lm_eval_baking.workflows.settings:CrossTaskSettings"),
])
def test_every_option_of_a_command_comes_from_its_settings_class(command, cls):
    """One default per setting: the parser's default is the dataclass field's, and its help is the field's."""
    import argparse
    import importlib
    from dataclasses import MISSING, fields

    from lm_eval_baking.cli import build_parser

    module, name = cls.split(":")
    settings = getattr(importlib.import_module(module), name)
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    actions = {a.dest: a for a in sub._actions}
    for f in fields(settings):
        action = actions[f.name]
        assert action.help.startswith(f.metadata["help"].replace("%", "%%")), f.name
        if f.default is not MISSING:
            assert action.default == f.default, f.name
        elif f.default_factory is not MISSING:
            assert action.default == f.default_factory(), f.name


@pytest.mark.parametrize("argv, line", [
    (["check", "{tmp}", "--min-quality", "abc"], "--min-quality needs a finite number, got abc"),
    (["check", "{tmp}", "--max-kl", "nan"], "--max-kl needs a finite number, got nan"),
    (["check-matrix", "{tmp}", "--min-share", "x"], "--min-share needs a finite number, got x"),
    (["check-matrix", "{tmp}", "--max-forgetting-drop-pct", "0"],
     "--max-forgetting-drop-pct must be a finite number above 0 (got 0.0); it is the largest allowed drop in percent, "
     "e.g. 3.4"),
    (["bake", "--prompt", "x", "--epochs", "two", "--output", "{tmp}/b"], "--epochs needs a whole number, got two"),
])
def test_a_bad_number_on_the_command_line_is_one_line(argv, line, tmp_path, capsys):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    assert capsys.readouterr().err.strip() == f"lm-eval-baking: error: {line}"


def test_check_reads_its_bounds_from_the_settings():
    from lm_eval_baking.results.settings import CheckSettings

    settings = CheckSettings(results=[], min_quality=0.8, max_forgetting_drop_pct=3.4, max=["kl=0.1"])
    assert [(t.metric, t.bound, t.limit, t.origin) for t in settings.thresholds()] == [
        ("quality", "min", 0.8, "--min-quality 0.8"), ("forgetting", "max", 3.4, "--max-forgetting-drop-pct 3.4"),
        ("kl", "max", 0.1, "--max kl=0.1")]
