"""User questions that trajectories are sampled for: the built-in pool or a user file.

A question file is read by its format, named by its suffix:

- `.txt` (or no suffix): one question per line; blank lines and lines starting with '#' are skipped;
- `.jsonl`: one object per line with a "question" string (and optionally "category");
- `.json`: a list of such objects, or a list of strings;
- `.csv` / `.tsv`: a header row with a `question` column (and optionally `category`).

Any other suffix is refused, so a spreadsheet or a data dump is never read as lines of text.
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..constants import BUILTIN_QUESTIONS
from ..errors import BakingError
from ..utils.jsonl import parse_jsonl, read_text, split_lines
from ..utils.text import quoted

FORMATS = (".txt", ".jsonl", ".json", ".csv", ".tsv")
_EXAMPLE = '{"question": "Why is the sky blue?"}'


@dataclass(frozen=True)
class Question:
    text: str
    category: str = "user"
    where: str = field(default="", compare=False, repr=False)
    """FILE:LINE it was read from (a message that names one question names it so); not part of its identity."""


def load_questions(source: str | Path | None = None) -> list[Question]:
    """Read questions from `source`: None/'builtin' for the built-in pool, else a question file (see above)."""
    if source is None or str(source) == BUILTIN_QUESTIONS:
        text = resources.files("lm_eval_baking").joinpath("data/questions.jsonl").read_text("utf-8")
        return _from_rows(parse_jsonl(text, "built-in question pool"), "built-in question pool")
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix and suffix not in FORMATS:
        raise BakingError(f"question file {path} has the suffix {quoted(suffix)}, which is not a question format; "
                          f"save it as {', '.join(FORMATS)} (see `lm-eval-baking bake --help`)")
    _check_regular_file(path)
    text = read_text(path, "question file")
    if suffix == ".jsonl" or (not suffix and text.lstrip().startswith("{")):
        questions = _from_rows(parse_jsonl(text, str(path), f"use one JSON object per line, e.g. {_EXAMPLE}"),
                               str(path))
    elif suffix == ".json":
        questions = _from_json(text, path)
    elif suffix in (".csv", ".tsv"):
        questions = _from_table(text, path, "\t" if suffix == ".tsv" else ",")
    else:
        questions = _from_lines(text, str(path))
    if not questions:
        raise BakingError(f"question file {path} holds no questions; add one question per line")
    # Duplicates would leak held-out questions into training.
    return list({q.text: q for q in questions}.values())


def _check_regular_file(path: Path) -> None:
    """A question file must be a regular file: a folder, a missing path and a pipe each get their own line (a pipe
    is never opened: reading one blocks until something writes to it, and it cannot be read twice)."""
    if path.is_dir():
        raise BakingError(f"question file {path} is a folder, not a file; pass a file inside it (.txt one per line, "
                          ".jsonl, .json or .csv), or omit --questions")
    if not path.exists():
        raise BakingError(f"question file {path} not found; pass a .txt (one per line), .jsonl, .json or .csv file, "
                          "or omit --questions")
    if not path.is_file():
        raise BakingError(f"question file {path} is not a regular file (a pipe, socket or device); save the "
                          "questions to a file and pass that")


def _from_lines(text: str, where: str) -> list[Question]:
    lines = ((n, line.strip()) for n, line in enumerate(split_lines(text), 1))
    return [Question(line, where=f"{where}:{n}") for n, line in lines if line and not line.startswith("#")]


def _from_rows(numbered_rows: list[tuple[int, object]], where: str) -> list[Question]:
    questions = []
    for line_no, row in numbered_rows:
        question = row.get("question") if isinstance(row, dict) else None
        if not isinstance(question, str) or not question.strip():
            raise BakingError(f'{where}:{line_no}: needs a non-empty "question" string, e.g. {_EXAMPLE}')
        questions.append(Question(question.strip(), str(row.get("category", "user")), where=f"{where}:{line_no}"))
    return questions


def _from_json(text: str, path: Path) -> list[Question]:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise BakingError(f"question file {path} is not valid JSON ({getattr(e, 'msg', 'nested too deeply')}); "
                          f"use a list of questions, e.g. [{_EXAMPLE}]") from None
    if not isinstance(data, list):
        raise BakingError(f"question file {path} holds a JSON {type(data).__name__}, not a list; "
                          f"use a list of questions, e.g. [{_EXAMPLE}]")
    rows = [(i, {"question": item} if isinstance(item, str) else item) for i, item in enumerate(data, 1)]
    return _from_rows(rows, f"{path} item")


def _from_table(text: str, path: Path, delimiter: str) -> list[Question]:
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        fields = [f.strip().casefold() for f in reader.fieldnames or []]
        if "question" not in fields:
            raise BakingError(f"question file {path} has no 'question' column in its header "
                              f"({quoted(', '.join(reader.fieldnames or []))}); add a header row naming it")
        rows = [{k.strip().casefold(): v for k, v in row.items() if isinstance(k, str)} for row in reader]
    except csv.Error as e:
        raise BakingError(f"question file {path} is not valid {'TSV' if delimiter == chr(9) else 'CSV'} ({e}); "
                          "fix the file") from None
    # Line numbers count the header as line 1 (a row with a newline inside quotes shifts them: a hint only).
    return _from_rows([(line, {k: v for k, v in row.items() if v is not None}) for line, row in enumerate(rows, 2)],
                      str(path))


def split_questions(questions: list[Question], heldout_fraction: float, seed: int) -> tuple[list[Question], list[Question]]:
    """Deterministic (train, held-out) split; held-out questions are never trained on."""
    if not 0 < heldout_fraction < 1:
        raise BakingError(f"--heldout-fraction must be between 0 and 1 (got {heldout_fraction})")
    if len(questions) < 2:
        raise BakingError(f"need at least 2 distinct questions to hold some out (got {len(questions)}); add questions")
    shuffled = list(questions)
    random.Random(seed).shuffle(shuffled)
    n_heldout = min(max(1, round(len(shuffled) * heldout_fraction)), len(shuffled) - 1)
    return shuffled[n_heldout:], shuffled[:n_heldout]
