"""User questions that trajectories are sampled for: the built-in pool or a user file.

A file is either plain text (one question per line; blank lines and lines
starting with '#' are skipped) or JSONL (one object per line with a
"question" field, and optionally "category").
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import BakingError

BUILTIN = "builtin"


@dataclass(frozen=True)
class Question:
    text: str
    category: str = "user"


def load_questions(source: str | Path | None = None) -> list[Question]:
    """Read questions from `source`: None/'builtin' for the built-in pool, else a .txt/.jsonl path."""
    if source is None or str(source) == BUILTIN:
        text = resources.files("lm_eval_baking").joinpath("data/questions.jsonl").read_text("utf-8")
        return _parse_jsonl(text, "built-in question pool")
    path = Path(source)
    if not path.is_file():
        raise BakingError(f"question file {path} not found; pass a .txt (one per line) or .jsonl file, or omit --questions")
    try:
        # Bytes, then decode: no newline translation (see _lines); "utf-8-sig" accepts a leading BOM.
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BakingError(f"question file {path} is not UTF-8 text; save it as UTF-8") from None
    except OSError as e:
        raise BakingError(f"cannot read question file {path} ({e.strerror or e}); check the path") from None
    looks_jsonl = path.suffix == ".jsonl" or text.lstrip().startswith("{")
    questions = _parse_jsonl(text, str(path)) if looks_jsonl else _parse_lines(text)
    if not questions:
        raise BakingError(f"question file {path} holds no questions; add one question per line")
    duplicates = len(questions) - len({q.text for q in questions})
    if duplicates:
        # Duplicates would leak held-out questions into training.
        questions = list({q.text: q for q in questions}.values())
    return questions


def _lines(text: str) -> list[str]:
    """Lines end at \n, \r\n or \r. Not str.splitlines: that also cuts at U+2028, U+0085, form
    feeds and other characters that a JSON string or a question may legitimately hold."""
    return re.split(r"\r\n?|\n", text)


def _parse_lines(text: str) -> list[Question]:
    lines = (line.strip() for line in _lines(text))
    return [Question(line) for line in lines if line and not line.startswith("#")]


def _parse_jsonl(text: str, where: str) -> list[Question]:
    questions = []
    for line_no, line in enumerate(_lines(text), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except RecursionError:
            raise BakingError(f"{where}:{line_no}: JSON nested too deeply; use one flat JSON object per line") from None
        except json.JSONDecodeError as e:
            raise BakingError(f"{where}:{line_no}: not valid JSON ({e.msg}); use one JSON object per line") from None
        question = row.get("question") if isinstance(row, dict) else None
        if not isinstance(question, str) or not question.strip():
            raise BakingError(f'{where}:{line_no}: needs a non-empty "question" string, e.g. {{"question": "Why is the sky blue?"}}')
        questions.append(Question(question.strip(), str(row.get("category", "user"))))
    return questions


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
