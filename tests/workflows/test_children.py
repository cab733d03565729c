"""Children die with their parent, and a killed run's staging folders go on the next run (issue 22, item 3).

Every test here runs real processes and real signals: a parent Python process
spawns its child through `utils.processes.run_child` (the one way the package
spawns anything), the parent is killed, and the test polls until the child is
gone. Polling has only generous upper bounds (`STARTUP_S`, `GONE_S`), never a
timing assertion; a sleeper sleeps far longer than both, so one that ends by
itself cannot pass for one that was ended.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lm_eval_baking.utils.atomic import remove_stale_staging, staged_directory
from lm_eval_baking.utils.processes import run_child

REPO = Path(__file__).resolve().parents[2]
STARTUP_S, GONE_S, SLEEP_S = 60.0, 20.0, 600
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the parent-death signal (PR_SET_PDEATHSIG) is Linux's")

# Writes its pid to argv[1] (atomically, so a reader never sees half a number), then sleeps.
SLEEPER = ("import os, sys, time\n"
           "open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid())); os.replace(sys.argv[1] + '.tmp', sys.argv[1])\n"
           f"time.sleep({SLEEP_S})\n")


@pytest.fixture
def spawned():
    """Every pid a test starts or learns of; whatever is still alive at the end is SIGKILLed (a failing test
    leaves no sleeper behind)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _python(spawned: list[int], script: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # A test run started as a background job of a non-interactive shell inherits SIGINT ignored, and so would the
    # parent here (Python then installs no KeyboardInterrupt handler): give it Ctrl-C's default back.
    process = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=env,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    spawned.append(process.pid)
    return process


def _wait_for(path: Path) -> str:
    end = time.monotonic() + STARTUP_S
    while not path.is_file():
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text()


def _alive(pid: int) -> bool:
    """Running or asleep; a zombie (dead, not yet reaped by whoever inherited it) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _wait_gone(*pids: int) -> list[int]:
    """The pids still alive once all are gone or GONE_S has passed."""
    end = time.monotonic() + GONE_S
    while any(_alive(p) for p in pids) and time.monotonic() < end:
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def _kill(parent: subprocess.Popen, signum: int = signal.SIGKILL) -> None:
    parent.send_signal(signum)
    parent.wait(timeout=STARTUP_S)


# ---------------------------------------------------------------------------- children

@linux_only
def test_a_child_ends_when_its_parent_is_killed_with_sigkill(tmp_path, spawned):
    pid_file = tmp_path / "child.pid"
    parent = _python(spawned, "import sys\nfrom lm_eval_baking.utils.processes import run_child\n"
                     "run_child([sys.executable, '-c', sys.argv[1], sys.argv[2]])\n", SLEEPER, pid_file)
    child = int(_wait_for(pid_file))
    spawned.append(child)
    assert _alive(child)
    _kill(parent)
    assert _wait_gone(child) == [], "the child outlived its SIGKILLed parent"


@linux_only
def test_ctrl_c_in_the_parent_ends_the_childs_whole_group(tmp_path, spawned):
    """The child runs in its own session, so only the parent sees the SIGINT; it ends the whole group,
    the child's own child included."""
    pids = tmp_path / "pids"
    grandchild_file = tmp_path / "grandchild.pid"
    child_script = ("import json, os, subprocess, sys, time\n"
                    "g = subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2]])\n"
                    "while not os.path.exists(sys.argv[2]): time.sleep(0.05)\n"
                    "open(sys.argv[3] + '.tmp', 'w').write(json.dumps([os.getpid(), g.pid]))\n"
                    f"os.replace(sys.argv[3] + '.tmp', sys.argv[3]); time.sleep({SLEEP_S})\n")
    parent = _python(spawned, "import sys\nfrom lm_eval_baking.utils.processes import run_child\n"
                     "try:\n    run_child([sys.executable, '-c', *sys.argv[1:]])\n"
                     "except KeyboardInterrupt:\n    sys.exit(130)\n",
                     child_script, SLEEPER, grandchild_file, pids)
    child, grandchild = json.loads(_wait_for(pids))
    spawned += [child, grandchild]
    assert os.getpgid(child) == child != os.getpgid(parent.pid)  # a group of its own
    _kill(parent, signal.SIGINT)
    assert parent.returncode == 130
    assert _wait_gone(child, grandchild) == []


def test_a_child_that_exits_by_itself_gives_its_status_and_sees_its_environment():
    code = run_child([sys.executable, "-c", "import os, sys; sys.exit(int(os.environ['CODE']))"],
                     env={**os.environ, "CODE": "3"})
    assert code == 3


# ---------------------------------------------------------------------------- staging folders

HOLDER = ("import sys, time\nfrom pathlib import Path\nfrom lm_eval_baking.utils.atomic import staged_directory\n"
          "with staged_directory(sys.argv[1], replace=True) as staging:\n"
          "    (staging / 'half.bin').write_bytes(b'half')\n"
          "    Path(sys.argv[2] + '.tmp').write_text(str(staging)); Path(sys.argv[2] + '.tmp').rename(sys.argv[2])\n"
          f"    time.sleep({SLEEP_S})\n")


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_killed_runs_staging_folder_is_removed_by_the_next_write(tmp_path, spawned):
    out = tmp_path / "adapter"
    holder = _python(spawned, HOLDER, out, tmp_path / "staging.path")
    staging = Path(_wait_for(tmp_path / "staging.path"))
    _kill(holder)
    assert staging.name.startswith(".adapter.staging-") and (staging / "half.bin").is_file()

    with staged_directory(out, replace=True) as new:
        (new / "whole.bin").write_bytes(b"whole")
    assert not staging.exists()
    assert sorted(p.name for p in out.iterdir()) == ["whole.bin"]
    assert _hidden(tmp_path) == []


def test_a_live_runs_staging_folder_is_never_removed(tmp_path, spawned):
    out = tmp_path / "adapter"
    holder = _python(spawned, HOLDER, out, tmp_path / "staging.path")
    try:
        live = Path(_wait_for(tmp_path / "staging.path"))
        with staged_directory(out, replace=True) as new:
            (new / "mine.bin").write_bytes(b"mine")
        remove_stale_staging(out)
        assert (live / "half.bin").read_bytes() == b"half"  # the concurrent run's folder, untouched
        assert sorted(p.name for p in out.iterdir()) == ["mine.bin"]
    finally:
        _kill(holder)
    remove_stale_staging(out)  # its run is dead now: the folder is stale
    assert _hidden(tmp_path) == []


def test_a_staging_folder_in_use_in_this_process_is_kept_too(tmp_path):
    out = tmp_path / "report"
    with staged_directory(out, replace=True) as outer:
        (outer / "a").write_text("outer")
        with staged_directory(out, replace=True) as inner:  # a second writer of the same output
            (inner / "a").write_text("inner")
        assert (outer / "a").read_text() == "outer"
    assert (out / "a").read_text() == "outer"  # the last to finish wins, whole
    assert _hidden(tmp_path) == []


def test_a_run_killed_between_its_two_renames_gets_the_previous_output_back(tmp_path):
    """Killed after moving the old `final` aside and before moving the new one in: the old one is the only
    complete copy, so the cleanup puts it back instead of deleting it."""
    out = tmp_path / "adapter"
    (tmp_path / ".adapter.old-abcd1234" / "adapter").mkdir(parents=True)
    (tmp_path / ".adapter.old-abcd1234" / "adapter" / "weights").write_bytes(b"previous")
    (tmp_path / ".adapter.staging-wxyz_789").mkdir()
    (tmp_path / ".adapter.staging-wxyz_789" / "weights").write_bytes(b"maybe half")
    remove_stale_staging(out)
    assert (out / "weights").read_bytes() == b"previous"
    assert _hidden(tmp_path) == []


def test_the_cleanup_never_follows_a_symlink_nor_touches_names_we_do_not_make(tmp_path):
    user = tmp_path / "thesis"
    user.mkdir()
    (user / "chapter.txt").write_text("years of work")
    (tmp_path / ".adapter.staging-abcd1234").symlink_to(user, target_is_directory=True)
    for name in (".adapter.staging-mine", ".adapterx.staging-abcd1234", ".adapter.partial", ".adapter.old-"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "keep").write_text(name)
    with staged_directory(tmp_path / "adapter", replace=True) as new:
        (new / "w").write_text("w")
    assert (user / "chapter.txt").read_text() == "years of work"
    assert (tmp_path / ".adapter.staging-abcd1234").is_symlink()
    for name in (".adapter.staging-mine", ".adapterx.staging-abcd1234", ".adapter.partial", ".adapter.old-"):
        assert (tmp_path / name / "keep").read_text() == name


# ---------------------------------------------------------------------------- the pipeline's lm_eval runs

FAKE_LM_EVAL = """import os, sys, time
from pathlib import Path
output = Path(sys.argv[sys.argv.index("--output_path") + 1])
if os.environ.get("FAKE_LM_EVAL_PID"):
    (output / "partial.json").write_text("{")
    pid_file = os.environ["FAKE_LM_EVAL_PID"]
    open(pid_file + ".tmp", "w").write(str(os.getpid())); os.replace(pid_file + ".tmp", pid_file)
    time.sleep(SLEEP)
(output / "base").mkdir(parents=True, exist_ok=True)
(output / "base" / "results_1.json").write_text("{}")
"""

RUN_ONCE = ("import sys\nfrom pathlib import Path\nimport lm_eval_baking.workflows.lm_eval_runs as runs\n"
            "from lm_eval_baking.core.harness import LmEvalRun\n"
            "runs.lm_eval_executable = lambda: sys.argv[1]\n"
            "runs.run_lm_eval(LmEvalRun(base='tiny', tasks=['baking_mckl']), Path(sys.argv[2]), [], 'the test')\n")


@linux_only
def test_a_killed_pipelines_lm_eval_ends_and_its_staging_folder_goes_on_the_rerun(tmp_path, monkeypatch, spawned):
    """What `kill -9` of `pipeline` does while lm_eval runs: through the pipeline's own `run_lm_eval`, with a
    stand-in lm_eval (a real process) that writes into its staging folder and sleeps."""
    import lm_eval_baking.workflows.lm_eval_runs as runs
    from lm_eval_baking.core.harness import LmEvalRun

    fake = tmp_path / "lm_eval"
    fake.write_text(f"#!{sys.executable}\nSLEEP = {SLEEP_S}\n{FAKE_LM_EVAL}")
    fake.chmod(0o755)
    out = tmp_path / "lm_eval_runs" / "mckl"
    pid_file = tmp_path / "lm_eval.pid"
    monkeypatch.setenv("FAKE_LM_EVAL_PID", str(pid_file))
    pipeline = _python(spawned, RUN_ONCE, fake, out)
    child = int(_wait_for(pid_file))
    spawned.append(child)
    _kill(pipeline)
    assert _wait_gone(child) == [], "lm_eval outlived the SIGKILLed pipeline"
    assert [n for n in _hidden(out.parent) if n.startswith(".mckl.staging-")]  # what the kill left

    monkeypatch.delenv("FAKE_LM_EVAL_PID")
    monkeypatch.setattr(runs, "lm_eval_executable", lambda: str(fake))
    assert runs.run_lm_eval(LmEvalRun(base="tiny", tasks=["baking_mckl"]), out, [], "the test") is True
    assert _hidden(out.parent) == []
    assert (out / "base" / "results_1.json").is_file() and not (out / "partial.json").exists()
