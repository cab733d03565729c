"""lm_eval's conventions that every layer needs, without importing lm_eval or torch:
where our task folder is, how an lm_eval command line is built, which metric heads a task.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..constants import TASKS_DIR
from ..errors import BakingError

# For a task we know nothing about, the first of these it reports is its headline metric;
# otherwise its first higher-is-better metric.
PREFERRED_METRICS = ("acc", "exact_match", "acc_norm", "f1", "bleu")
TASKS_PATH_COMMAND = '"$(lm-eval-baking tasks-path)"'


def tasks_path() -> Path:
    """The folder of our lm_eval task folders: the installed copy inside the package, else the checkout's `tasks/`.

    A build (setup.py) copies the repository's top-level `tasks/` into the package; a source checkout or an
    editable install has no such copy and reads the repository's own.
    """
    package = Path(__file__).resolve().parents[1]
    candidates = [
        package / TASKS_DIR,  # a wheel or `pip install .`
        package.parent / TASKS_DIR,  # a source checkout or an editable install
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise BakingError(f"lm-eval-baking's task folder is missing (looked in {candidates[0]} and {candidates[1]}); "
                      "reinstall with `pip install --force-reinstall lm-eval-baking`")


def headline_metric(metrics: Sequence[str], higher_is_better: dict[str, bool | None]) -> str | None:
    """The metric a table shows for a task: a preferred one it reports, else its first higher-is-better one."""
    for name in PREFERRED_METRICS:
        if name in metrics:
            return name
    return next((m for m in metrics if higher_is_better.get(m) is not None), None)


@dataclass
class LmEvalRun:
    """One `lm_eval` command line: to run (`argv`) or to print for the user (`shell`)."""

    base: str
    tasks: Sequence[str]
    adapter: str | None = None
    system_instruction: str | None = None
    metadata: dict | None = None
    dtype: str | None = None
    output_path: str | None = None
    log_samples: bool = False
    device: str = "cpu"
    batch_size: int | str = 8
    apply_chat_template: bool = True
    num_fewshot: int | None = None
    include_path: str | None = None
    """None: this installation's task folder (printed as "$(lm-eval-baking tasks-path)")."""
    executable: str = "lm_eval"

    def argv(self) -> list[str]:
        return self._words(str(self.include_path or tasks_path()))

    def shell(self) -> str:
        """The command as a user would type it; the task folder stays a `$(lm-eval-baking tasks-path)`."""
        include = shlex.quote(str(self.include_path)) if self.include_path else TASKS_PATH_COMMAND
        words = self._words("\0")
        return " ".join(include if w == "\0" else shlex.quote(w) for w in words)

    def _words(self, include_path: str) -> list[str]:
        model_args = f"pretrained={self.base}" + (f",dtype={self.dtype}" if self.dtype else "")
        model_args += f",peft={self.adapter}" if self.adapter else ""
        words = [self.executable, "--model", "hf", "--model_args", model_args]
        words += ["--apply_chat_template"] if self.apply_chat_template else []
        words += ["--device", self.device, "--batch_size", str(self.batch_size),
                  "--include_path", include_path, "--tasks", ",".join(self.tasks)]
        if self.num_fewshot is not None:
            words += ["--num_fewshot", str(self.num_fewshot)]
        if self.metadata:
            words += ["--metadata", json.dumps(self.metadata, ensure_ascii=False)]
        if self.system_instruction:
            words += ["--system_instruction", self.system_instruction]
        if self.log_samples:
            words += ["--log_samples"]
        if self.output_path:
            words += ["--output_path", str(self.output_path)]
        return words
