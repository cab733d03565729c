import json

import pytest

from lm_eval_baking import BakingError
from lm_eval_baking.core.questions import load_questions, split_questions


def test_builtin_pool_is_large_and_diverse():
    questions = load_questions()
    assert len(questions) == 320
    assert len({q.category for q in questions}) == 16
    assert len({q.text.lower() for q in questions}) == 320


def test_text_file_skips_blanks_comments_and_duplicates(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text("# my questions\nWhy is the sky blue?\n\n  How do tides work?  \nWhy is the sky blue?\n")
    assert [q.text for q in load_questions(path)] == ["Why is the sky blue?", "How do tides work?"]


def test_jsonl_file_keeps_categories(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": "What is 2+2?", "category": "math"}) + "\n")
    (question,) = load_questions(path)
    assert (question.text, question.category) == ("What is 2+2?", "math")


@pytest.mark.parametrize("content, message", [
    ("", "holds no questions"),
    ("# only a comment\n\n", "holds no questions"),
    ('{"question": "ok?"}\n{not json}\n', ":2: not valid JSON"),
    ('{"text": "no question field"}\n', 'needs a non-empty "question"'),
])
def test_bad_question_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / ("q.jsonl" if content.startswith("{") else "q.txt")
    path.write_text(content)
    with pytest.raises(BakingError, match=message):
        load_questions(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(BakingError, match="not found"):
        load_questions(tmp_path / "nope.txt")


def test_split_is_deterministic_and_disjoint():
    questions = load_questions()
    train, heldout = split_questions(questions, 0.2, seed=3)
    again_train, again_heldout = split_questions(questions, 0.2, seed=3)
    assert [q.text for q in heldout] == [q.text for q in again_heldout]
    assert len(heldout) == 64 and len(train) == 256
    assert not {q.text for q in train} & {q.text for q in heldout}
