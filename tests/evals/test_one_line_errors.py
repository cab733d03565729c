"""Our tasks raise BakingError; only where nothing catches it (the `lm_eval` command) it ends the process in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lm_eval_baking.errors import BakingError
from lm_eval_baking.evals.lm_tasks import sampled_answers


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_an_in_process_caller_gets_the_baking_error():
    with pytest.raises(BakingError, match="sampled_answers must be a whole number"):
        sampled_answers({"sampled_answers": -1})


def test_an_uncaught_baking_error_from_our_tasks_is_one_line_and_status_2():
    # What lm_eval does: import the module a task YAML names, call its hook, catch nothing.
    run = _run("import lm_eval_baking.evals.lm_tasks as t; print('started', flush=True); "
               "t.sampled_answers({'sampled_answers': -1})")
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stdout == "started\n" and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [
        "lm-eval-baking: error: sampled_answers must be a whole number of 0 or more, not -1; "
        "e.g. --metadata '{\"sampled_answers\": 2}'"]


def test_any_other_uncaught_error_keeps_its_traceback():
    run = _run("import lm_eval_baking.evals.lm_tasks; 1 / 0")
    assert run.returncode == 1 and "Traceback" in run.stderr and "ZeroDivisionError" in run.stderr
