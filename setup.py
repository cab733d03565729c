"""Ships the repository's `tasks/` folder inside the package, as `lm_eval_baking/tasks/`.

Everything else is declared in setup.cfg. The task folders stay at the top of the repository
(where `--include_path tasks` and the docs name them); a build copies the whole tree, every file
of every folder, so a new task folder or template can never be left out of a wheel.
`core.harness.tasks_path()` finds this copy in an install and the repository's own in a checkout.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
TASKS = "tasks"  # constants.TASKS_DIR: the folder's name in the repository and inside the package
SKIPPED = shutil.ignore_patterns("__pycache__", "*.pyc")


class BuildWithTasks(build_py):
    """build_py, plus a copy of tasks/ as package data of lm_eval_baking."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's tasks/ directly
        target = Path(self.build_lib) / "lm_eval_baking" / TASKS
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(ROOT / TASKS, target, ignore=SKIPPED)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False):
            return outputs
        target = Path(self.build_lib) / "lm_eval_baking" / TASKS
        return outputs + [str(p) for p in sorted(target.rglob("*")) if p.is_file()]


setup(cmdclass={"build_py": BuildWithTasks})
