"""`cross-task` end to end on the tiny model: two tasks (generation and multiple choice) through real lm_eval."""

import pytest

from lm_eval_baking import BakeConfig
from lm_eval_baking.cli import main
from lm_eval_baking.errors import BakingError
from lm_eval_baking.evals.config import TaskPromptSettings
from lm_eval_baking.results.cross_task_record import CrossTaskRecord
from lm_eval_baking.workflows.settings import CrossTaskSettings
from lm_eval_baking.workflows.cross_task import cross_task, parse_bakes

from conftest import FEWSHOT_TASKS

TASKS = ["tiny_fewshot_sums", "tiny_fewshot_colours"]


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("cross-task")
    config = BakeConfig(prompt="placeholder", model=str(tiny_model_dir), max_new_tokens=3, epochs=1, batch_size=4,
                        lora_rank=2, lora_alpha=4, precision="fp32", device="cpu")
    report = cross_task(TASKS, output, config, settings=CrossTaskSettings(limit=4, eval_batch_size=4),
                        task_settings=TaskPromptSettings(include_path=FEWSHOT_TASKS, max_task_questions=10),
                        progress=False)
    return output, report


def test_cross_task_scores_every_bake_on_every_task(run):
    output, report = run
    assert CrossTaskRecord.from_pretrained(output) == report
    assert (output / "cross_task.png").read_bytes().startswith(b"\x89PNG")
    assert report.num_fewshot == {"tiny_fewshot_sums": 3, "tiny_fewshot_colours": 2}
    scores = report.scores
    for task in TASKS:
        assert set(scores["base"][task]) == {"0", "k"}
        assert len(scores["base"][task]["0"]["per_doc"]) == 4
        for baked in TASKS:
            assert set(scores[baked][task]) == ({"0", "k"} if baked == task else {"0"})
    assert scores["base"]["tiny_fewshot_colours"]["0"]["metric"] == "acc"
    assert any("--num_fewshot 3" in c and "--apply_chat_template" in c for c in report.lm_eval_commands)
    cells = report.matrix["cells"]
    assert cells["tiny_fewshot_sums"]["tiny_fewshot_sums"]["kind"] == "own"
    assert cells["tiny_fewshot_sums"]["tiny_fewshot_colours"]["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE")


def test_named_bakes_are_checked_and_reused(run, tiny_model_dir, tmp_path, capsys):
    output, report = run
    bakes = report.bakes
    wrong = [f"tiny_fewshot_sums={bakes['tiny_fewshot_colours']}", f"tiny_fewshot_colours={bakes['tiny_fewshot_sums']}"]
    code = main(["cross-task", "--tasks", ",".join(TASKS), "--output", str(tmp_path / "x"), "--model",
                 str(tiny_model_dir), "--include-path", FEWSHOT_TASKS, "--limit", "4", "--quiet",
                 *[word for pair in wrong for word in ("--bake", pair)]])
    assert code == 2 and "is not a bake of task" in capsys.readouterr().err
    right = [f"{task}={folder}" for task, folder in bakes.items()]
    code = main(["cross-task", "--tasks", *TASKS, "--output", str(tmp_path / "y"), "--model", str(tiny_model_dir),
                 "--include-path", FEWSHOT_TASKS, "--limit", "4", "--device", "cpu", "--quiet",
                 *[word for pair in right for word in ("--bake", pair)]])
    assert code in (0, 1, 3)
    again = CrossTaskRecord.from_pretrained(tmp_path / "y")
    assert again.scores == report.scores  # the same bakes on the same docs: the same per-doc scores
    assert not (tmp_path / "y" / "bakes").exists()


def test_bad_cross_task_input_is_refused_before_model_work(tmp_path):
    config = BakeConfig(prompt="placeholder")
    with pytest.raises(BakingError, match="at least two different tasks"):
        cross_task(["a"], tmp_path, config)
    with pytest.raises(BakingError, match="not in --tasks"):
        cross_task(["a", "b"], tmp_path, config, bakes={"c": "x"})
    with pytest.raises(BakingError, match="is not TASK=DIR"):
        parse_bakes(["just-a-folder"])


def test_a_second_run_reuses_the_base_models_scores_from_the_store(run, tiny_model_dir, tmp_path, monkeypatch):
    import lm_eval_baking.workflows.cross_task as workflow

    output, report = run
    loads = []
    real = workflow.load_lm
    monkeypatch.setattr(workflow, "load_lm", lambda base, adapter, *a: loads.append(adapter) or real(base, adapter, *a))
    config = BakeConfig(prompt="placeholder", model=str(tiny_model_dir), device="cpu")
    task_settings = TaskPromptSettings(include_path=FEWSHOT_TASKS)
    again = cross_task(TASKS, tmp_path / "again", config, settings=CrossTaskSettings(limit=4, eval_batch_size=4),
                       task_settings=task_settings, bakes=report.bakes, progress=False)
    assert None not in loads, "the base model was loaded again"
    assert again.scores["base"] == report.scores["base"]
    assert sorted(again.base_reused) == sorted(f"{t}, num_fewshot={k}" for t in TASKS
                                                  for k in (0, report.num_fewshot[t]))
    assert len(again.lm_eval_commands) == len(report.lm_eval_commands)

    loads.clear()
    cross_task(TASKS, tmp_path / "off", config, settings=CrossTaskSettings(limit=4, eval_batch_size=4, reuse_base=False),
               task_settings=task_settings, bakes=report.bakes, progress=False)
    assert loads.count(None) == 1
