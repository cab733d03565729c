"""The baking_fewshot tasks: the generative BIG-bench converter's seeded splits, the exact-match scorer, the YAMLs."""

import json

from lm_eval_baking.evals import bigbench
from lm_eval_baking.evals.lm_eval_glue import task_manager_for
from lm_eval_baking.evals.lm_tasks import fewshot_exact_match, normalized_answer


def write_task(path, examples, **settings):
    path.write_text(json.dumps({"name": "synthetic", "examples": examples, **settings}))
    return path


def test_generative_splits_are_seeded_disjoint_and_prefix_stable(tmp_path):
    examples = [{"input": f"word{i}", "target": f"words{i}"} for i in range(100)]
    examples += [{"input": "word3", "target": "duplicate"}, {"input": "no target"},
                 {"input": "mc", "target_scores": {"a": 1, "b": 0}}, {"input": "many", "target": ["2", "two"]}]
    path = write_task(tmp_path / "task.json", examples, example_input_prefix="This is a ",
                      example_output_prefix=". There are two ")
    splits = bigbench.convert_generative(path, max_docs=50)
    assert len(splits["train"]) == 30 and len(splits["test"]) == 50  # 101 distinct inputs with a target
    train_inputs, test_inputs = ({d["input"] for d in splits[s]} for s in ("train", "test"))
    assert not train_inputs & test_inputs
    assert splits == bigbench.convert_generative(path, max_docs=50), "deterministic"
    assert bigbench.convert_generative(path, max_docs=20)["test"] == splits["test"][:20]
    assert bigbench.convert_generative(path, max_docs=20)["train"] == splits["train"]
    doc = next(d for d in splits["train"] + splits["test"] if d["input"].startswith("This is a word7."))
    assert doc == {"input": "This is a word7. There are two", "target": "words7", "targets": ["words7"]}
    many = next(d for d in splits["train"] + bigbench.convert_generative(path, max_docs=None)["test"]
                if "many" in d["input"])
    assert many["targets"] == ["2", "two"]


def test_exact_match_wants_the_answer_alone():
    doc = {"target": "abilities", "targets": ["abilities"]}
    assert fewshot_exact_match(doc, [" Abilities.\nThis is a cat."]) == {"exact_match": 1.0}
    assert fewshot_exact_match(doc, ["The plural of ability is abilities."]) == {"exact_match": 0.0}
    assert fewshot_exact_match({"target": "3", "targets": ["three", "3"]}, ["three"])["exact_match"] == 1.0
    assert normalized_answer("  c, a, h\n") == "c, a, h"


def test_the_fewshot_group_registers_with_lm_eval():
    manager = task_manager_for(["baking_fewshot"])
    assert "baking_fewshot" in manager.all_groups
    assert {"baking_fewshot_plural", "baking_fewshot_past_tense", "baking_fewshot_negation",  # standalone
            "baking_fewshot_identity", "baking_fewshot_arithmetic_1_digit_multiplication",
            "baking_fewshot_arithmetic_1_digit_subtraction"} <= set(manager.all_tasks)
