"""The package installs like one: a wheel built from this checkout, installed into a fresh venv outside it,
carries every task folder and data file, and lm_eval runs one of our tasks from that install.

The venv borrows this environment's site-packages (torch, lm_eval, ...) through a .pth file, so nothing
is downloaded; a plain .pth line only adds a folder to sys.path, so the checkout's editable install
(a finder registered by a .pth file in that folder) is never activated and cannot shadow the wheel.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "lm_eval_baking"
TASKS = REPO / "tasks"
# What a build reads: setup.py copies tasks/ into the package, setup.cfg declares the rest.
BUILD_INPUTS = ["setup.py", "setup.cfg", "pyproject.toml", "README.md", "MANIFEST.in", "lm_eval_baking", "tasks"]
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc")


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1", **extra}


def check(command: list, cwd: Path, **env) -> str:
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=clean_env(**env), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{command} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv, outside the checkout, with the wheel built from this checkout installed in it."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    source.mkdir()
    for name in BUILD_INPUTS:  # a copy, so the build leaves no build/ or *.egg-info in the checkout
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, source / name, **({"ignore": SKIP} if (REPO / name).is_dir() else {}))
    check([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
           "--wheel-dir", root / "dist", source], root)
    wheel = next((root / "dist").glob("lm_eval_baking-*.whl"))

    venv = root / "venv"
    check([sys.executable, "-m", "venv", "--without-pip", venv], root)
    python = venv / "bin" / "python"
    site = Path(check([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root).strip())
    shared = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site / "zz_shared_site_packages.pth").write_text("".join(f"{path}\n" for path in shared))
    check([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--quiet", wheel],
          root)
    return venv


def test_the_wheel_installs_every_task_file_and_data_file_outside_the_checkout(installed):
    site_file = check([installed / "bin" / "python", "-c", "import lm_eval_baking; print(lm_eval_baking.__file__)"],
                      installed.parent)
    package = Path(site_file.strip()).parent
    assert package.is_relative_to(installed), f"{package} shadows the wheel installed in {installed}"

    printed = Path(check([installed / "bin" / "lm-eval-baking", "tasks-path"], installed.parent).strip())
    assert printed == package / "tasks"
    assert files_under(printed) == files_under(TASKS), "the installed task folders differ from tasks/"
    assert {f.name for f in TASKS.iterdir() if f.is_dir()} <= {f.name for f in printed.iterdir()}

    # Every file of the package, modules and data alike (questions, the `evaluate` comparison module), ships.
    source_files = files_under(PACKAGE)
    installed_files = {name: data for name, data in files_under(package).items() if not name.startswith("tasks/")}
    assert sorted(set(source_files) - set(installed_files)) == [], "files missing from the wheel"
    assert installed_files == source_files


def fake_bigbench_cache(cache: Path) -> None:
    """A cache holding the baking_fewshot tasks' BIG-bench files (synthetic examples), so lm_eval runs offline.
    (Both $LM_EVAL_BAKING_CACHE and $LM_EVAL_BAKING_BIGBENCH point the child at it.)"""
    names = [yaml.safe_load(path.read_text("utf-8"))["dataset_kwargs"]["task_name"]
             for path in sorted((TASKS / "baking_fewshot").glob("baking_fewshot_*.yaml"))]
    for name in names:
        examples = [{"input": f"word{i}", "target": f"words{i}"} for i in range(40)]
        task = cache / "bigbench" / "tasks" / name / "task.json"
        task.parent.mkdir(parents=True)
        task.write_text(json.dumps({"name": name, "examples": examples}))
    (cache / "bigbench" / "task_names.json").write_text(json.dumps(names))


def test_lm_eval_runs_our_task_from_the_installed_package(installed, tiny_model_dir, tmp_path):
    cache = tmp_path / "cache"
    fake_bigbench_cache(cache)
    tasks = check([installed / "bin" / "lm-eval-baking", "tasks-path"], tmp_path).strip()
    out = check([installed / "bin" / "python", "-m", "lm_eval", "--model", "hf", "--model_args",
                 f"pretrained={tiny_model_dir}", "--include_path", tasks, "--tasks", "baking_fewshot",
                 "--limit", "2", "--device", "cpu", "--batch_size", "8"], tmp_path, LM_EVAL_BAKING_CACHE=cache,
                LM_EVAL_BAKING_BIGBENCH=cache / "bigbench")
    members = yaml.safe_load((TASKS / "baking_fewshot" / "baking_fewshot.yaml").read_text("utf-8"))["task"]
    assert members, "the baking_fewshot group lists its tasks"
    for task in members:
        assert re.search(rf"\|\s*(- )?{task}\s*\|.*\|exact_match\|", out), out
