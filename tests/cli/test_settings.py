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
