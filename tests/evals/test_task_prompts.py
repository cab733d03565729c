"""A task's k-shot prompt equals lm_eval's own k-shot context, token for token, with and without a chat template.

Through the real `lm_eval` CLI on the tiny model: lm_eval logs the context it built for every
doc (--log_samples); the bake's teacher context (BakePrompt.context) must be that string, and
encode to the same token ids lm_eval's HFLM feeds the model.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lm_eval_baking.core.chat import encode_like_lm_eval
from lm_eval_baking.core.prompts import BakePrompt
from lm_eval_baking.errors import BakingError
from lm_eval_baking.evals.task_prompts import MIN_QUESTIONS, build_task_prompt

LM_EVAL = str(Path(sys.executable).with_name("lm_eval"))
TASKS = Path(__file__).parent / "fewshot_tasks"
SUMS, COLOURS = "tiny_fewshot_sums", "tiny_fewshot_colours"


def lm_eval_contexts(model_dir, tmp_path, *, chat: bool) -> dict[str, dict[int, str]]:
    """{task: {doc_id: the context string lm_eval built}} from the real CLI's --log_samples output."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = tmp_path / "lm_eval"
    command = [LM_EVAL, "--model", "hf", "--model_args", f"pretrained={model_dir}", "--device", "cpu",
               "--batch_size", "4", "--include_path", str(TASKS), "--tasks", f"{SUMS},{COLOURS}", "--limit", "4",
               "--log_samples", "--output_path", str(out)]
    command += ["--apply_chat_template", "--fewshot_as_multiturn"] if chat else []
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    contexts = {}
    for task in (SUMS, COLOURS):
        (samples,) = out.rglob(f"samples_{task}_*.jsonl")
        rows = [json.loads(line) for line in samples.read_text().splitlines()]
        contexts[task] = {row["doc_id"]: row["arguments"]["gen_args_0"]["arg_0"] for row in rows}
    return contexts


def questions_of(task_name: str) -> dict[int, str]:
    from lm_eval_baking.evals.task_prompts import load_task

    task = load_task(task_name, str(TASKS))
    return {i: task.doc_to_text(doc) for i, doc in enumerate(task.eval_docs)}


@pytest.mark.parametrize("chat", [True, False], ids=["chat-template", "no-chat-template"])
def test_task_prompt_equals_lm_evals_context_token_for_token(chat, tiny_model_dir, plain_model_dir, tmp_path):
    from lm_eval.models.huggingface import HFLM

    model_dir = tiny_model_dir if chat else plain_model_dir
    lm = HFLM(pretrained=str(model_dir), device="cpu", batch_size=1)
    tokenizer = lm.tokenizer
    assert bool(tokenizer.chat_template) is chat
    contexts = lm_eval_contexts(model_dir, tmp_path, chat=chat)
    form = "chat" if chat else "text"
    for task, docs_checked in ((SUMS, "every"), (COLOURS, "first")):
        built = build_task_prompt(task, form, include_path=str(TASKS))
        prompt = BakePrompt.from_setting(built.prompt, form, tokenizer)
        questions = questions_of(task)
        # first_n: one context for every doc; the default sampler: the bake takes the first doc's examples.
        doc_ids = sorted(contexts[task]) if docs_checked == "every" else [0]
        for doc_id in doc_ids:
            ours = prompt.context(tokenizer, questions[doc_id])
            theirs = contexts[task][doc_id]
            assert ours == theirs
            assert encode_like_lm_eval(tokenizer, ours) == lm.tok_encode(theirs)
        # the student reads the question alone, as lm_eval renders it at 0 shots (no description here: sums)
        if task == SUMS:
            student = prompt.context(tokenizer, questions[0], prompted=False)
            expected = (tokenizer.apply_chat_template([{"role": "user", "content": questions[0]}], tokenize=False,
                                                      add_generation_prompt=True) if chat else questions[0])
            assert student == expected


def test_chat_prompt_is_lm_evals_multiturn_messages():
    built = build_task_prompt(SUMS, "chat", include_path=str(TASKS))
    assert built.prompt == [
        {"role": "user", "content": "Q: What is 0 plus 0?\nA:"}, {"role": "assistant", "content": "0"},
        {"role": "user", "content": "Q: What is 0 plus 1?\nA:"}, {"role": "assistant", "content": "1"},
        {"role": "user", "content": "Q: What is 0 plus 2?\nA:"}, {"role": "assistant", "content": "2"},
    ]
    text = build_task_prompt(SUMS, "text", include_path=str(TASKS))
    assert text.prompt == "Q: What is 0 plus 0?\nA: 0\n\nQ: What is 0 plus 1?\nA: 1\n\nQ: What is 0 plus 2?\nA: 2\n\n"


def test_questions_come_from_outside_the_evaluated_split_without_the_examples():
    built = build_task_prompt(SUMS, "chat", include_path=str(TASKS))
    evaluated = set(questions_of(SUMS).values())
    examples = {m["content"] for m in built.prompt if m["role"] == "user"}
    assert built.questions and not set(built.questions) & (evaluated | examples)
    assert len(built.questions) == 22 - 3  # the train split less the three examples
    record = built.record
    assert record["name"] == SUMS and record["version"] == 2.0 and record["num_fewshot"] == 3
    assert record["fewshot_split"] == "train" and record["fewshot_sampler"] == "first_n"
    assert record["eval_split"] == "test" and record["question_splits"] == ["train"]
    assert len(record["config_sha256"]) == 64
    assert build_task_prompt(SUMS, "text", include_path=str(TASKS)).record["config_sha256"] == record["config_sha256"]
    mc = build_task_prompt(COLOURS, "chat", include_path=str(TASKS))
    assert mc.record["eval_split"] == "validation" and mc.record["question_splits"] == ["train"]
    assert mc.prompt[0] == {"role": "system", "content": "Name the colour of each thing.\n\n"}
    assert len(mc.questions) == 14 - 2


def test_too_few_questions_says_how_many_there_are():
    with pytest.raises(BakingError, match=rf"has 4 questions outside its evaluated split test .*fewer than the {MIN_QUESTIONS}"):
        build_task_prompt(SUMS, "chat", include_path=str(TASKS), num_fewshot=18)


def test_max_questions_takes_a_seeded_sample_in_doc_order():
    all_questions = build_task_prompt(SUMS, "chat", include_path=str(TASKS)).questions
    some = build_task_prompt(SUMS, "chat", include_path=str(TASKS), max_questions=10, seed=3).questions
    assert len(some) == 10 and some == [q for q in all_questions if q in some]
    assert some == build_task_prompt(SUMS, "chat", include_path=str(TASKS), max_questions=10, seed=3).questions
