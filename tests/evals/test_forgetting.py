"""BIG-bench data, the baking_forgetting tasks and the forgetting matrix.

The lm_eval runs use the tiny random model, so their scores mean nothing; they
check that the real harness loads our data and that the report has the right
shape. The task files are conftest's synthetic stand-ins in BIG-bench's format
(PyPI no longer serves the archive, and tests reach no network).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from lm_eval_baking.utils.hashing import sha256_file
from lm_eval_baking.evals import bigbench
from lm_eval_baking.errors import BakingError
from lm_eval_baking.cli import evaluating
from lm_eval_baking.evals.lm_eval_glue import expand_tasks, task_manager_for
from lm_eval_baking.results.forgetting import ForgettingRecord, build_report
from lm_eval_baking.workflows.forgetting import forgetting_matrix
from lm_eval_baking.core.harness import tasks_path

# Short prompts, so the lm_eval runs below stay fast; a subtask, so the '/' in its name is exercised.
BIGBENCH_TASK = "arithmetic/1_digit_addition"
ARCHIVE_TASK = "date_understanding"  # a task only the 1.0.0 archive has (arithmetic ones are generated without it)
LM_EVAL_TASK = "baking_forgetting_arithmetic_1_digit_addition"
GROUP_DIR = tasks_path() / "baking_forgetting"


@pytest.fixture(scope="session")
def bigbench_tasks():
    """The BIG-bench files the group needs (conftest's synthetic ones: nothing is downloaded)."""
    return bigbench.ensure_bigbench_tasks(_group_bigbench_names())


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory, tiny_model_dir):
    """A random (not zero-initialised) LoRA, so the adapted model differs from the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    path = tmp_path_factory.mktemp("adapters") / "random-lora"
    get_peft_model(model, config).save_pretrained(path)
    return path


def _folder_bigbench_names() -> list[str]:
    """The BIG-bench task behind each task YAML of the folder (the group YAML has none)."""
    configs = [yaml.safe_load(path.read_text()) for path in sorted(GROUP_DIR.glob("*.yaml"))]
    return [config["dataset_kwargs"]["task_name"] for config in configs if "dataset_kwargs" in config]


def _group_bigbench_names() -> list[str]:
    """The BIG-bench task behind each member of the group (the folder's other tasks are standalone)."""
    members = set(yaml.safe_load((GROUP_DIR / "baking_forgetting.yaml").read_text())["task"])
    configs = [yaml.safe_load(path.read_text()) for path in sorted(GROUP_DIR.glob("*.yaml"))]
    return [config["dataset_kwargs"]["task_name"] for config in configs
            if "dataset_kwargs" in config and config["task"] in members]


def _write_task(path: Path, examples: list[dict], **settings) -> Path:
    path.write_text(json.dumps({"name": "synthetic", "examples": examples, **settings}))
    return path


# (a) converter -----------------------------------------------------------

def test_convert_task_formats_like_bigbench_and_keeps_the_right_label(tmp_path):
    examples = [
        {"input": "2 + 2 =", "target_scores": {"3": 0, "4": 1, "5": 0}},
        {"input": "free text only", "target": "no choices"},
        {"input": "tie", "target_scores": {"a": 1, "b": 1}},
        {"input": "Sky colour?", "target_scores": {"green": 0.0, "blue": 1.0}},
    ]
    path = _write_task(tmp_path / "task.json", examples, task_prefix="Answer.\n", example_output_prefix="\nAnswer: ")

    docs = bigbench.convert_task(path)

    assert len(docs) == 2, "examples without target_scores or without one best choice are skipped"
    first = docs[0]
    assert sorted(first["choices"]) == ["3", "4", "5"]
    assert first["choices"][first["label"]] == "4"
    assert first["input"].startswith("Answer.\n\nQ: 2 + 2 =\n  choice: ")
    assert first["input"].endswith("\nAnswer:"), "trailing space is left to lm_eval's target delimiter"
    assert docs[1]["choices"][docs[1]["label"]] == "blue"
    assert bigbench.convert_task(path) == docs, "deterministic"


def test_convert_task_caps_docs_with_a_seeded_sample_in_file_order(tmp_path):
    examples = [{"input": f"q{i}", "target_scores": {"yes": int(i % 2), "no": int(not i % 2)}} for i in range(50)]
    path = _write_task(tmp_path / "task.json", examples, append_choices_to_input=False)

    docs = bigbench.convert_task(path, max_docs=10)

    numbers = [int(doc["input"].removeprefix("Q: q").removesuffix("\nA:")) for doc in docs]
    assert len(numbers) == 10 and numbers == sorted(numbers)
    assert docs == bigbench.convert_task(path, max_docs=10)
    assert "choice:" not in docs[0]["input"]


# (b) the task group in the real lm_eval ---------------------------------

def test_every_task_yaml_registers_with_lm_eval():
    # A YAML that fails to parse is skipped silently by lm_eval: catch it here.
    manager = task_manager_for(["baking_forgetting"])
    names = {f"baking_forgetting_{name.replace('/', '_')}" for name in _folder_bigbench_names()}
    assert len(names) >= 14 and len(_group_bigbench_names()) == 8
    assert names <= set(manager.all_tasks)
    assert "baking_forgetting" in manager.all_groups


def test_lm_eval_runs_a_bigbench_task_on_the_tiny_model(bigbench_tasks, tiny_model_dir):
    import lm_eval

    output = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(tiny_model_dir)}, tasks=[LM_EVAL_TASK],
        task_manager=task_manager_for([LM_EVAL_TASK]), limit=4, device="cpu", batch_size=4, log_samples=False,
    )
    result = output["results"][LM_EVAL_TASK]
    assert 0.0 <= result["acc,none"] <= 1.0
    assert output["n-samples"][LM_EVAL_TASK]["effective"] == 4


def test_group_expands_to_its_bigbench_tasks(bigbench_tasks):
    leaves = expand_tasks(task_manager_for(["baking_forgetting"]), ["baking_forgetting"])
    assert LM_EVAL_TASK in leaves and "baking_forgetting" not in leaves


# (c) the forgetting matrix ----------------------------------------------

def test_forgetting_command_writes_json_and_heatmap(bigbench_tasks, tiny_model_dir, tiny_adapter, tmp_path, capsys):
    import argparse

    import matplotlib.image

    parser = argparse.ArgumentParser()
    evaluating.register(parser.add_subparsers())
    out = tmp_path / "report"
    args = parser.parse_args([
        "forgetting", "--model", str(tiny_model_dir), "--adapters", str(tiny_adapter), "--tasks", LM_EVAL_TASK,
        "--output", str(out), "--limit", "4", "--batch-size", "4", "--quiet",
        "--max-forgetting-drop-pct", "1000",  # a drop can't exceed 100%, so this run must pass
    ])

    code = args.run(args)
    report = ForgettingRecord.from_pretrained(out)
    assert code == {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}[report.verdict]
    assert report.tasks == [LM_EVAL_TASK] and report.adapters == [str(tiny_adapter)]
    assert report.metrics == {LM_EVAL_TASK: "acc"} and report.limit == 4 and report.max_forgetting_drop_pct == 1000
    # Every doc's score is kept, so any later comparison can be paired doc by doc.
    assert len(report.per_doc["base"][LM_EVAL_TASK]) == 4
    assert set(report.per_doc[str(tiny_adapter)][LM_EVAL_TASK]) == set(report.per_doc["base"][LM_EVAL_TASK])
    judged = report.per_adapter[str(tiny_adapter)]
    cell = judged["per_task"][LM_EVAL_TASK]
    assert cell["comparison"]["n"] == 4 and cell["comparison"]["test"] == "mcnemar-exact"
    assert cell["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE") and "p_holm" in cell
    assert judged["group"]["comparison"]["n"] == 4
    assert matplotlib.image.imread(out / "forgetting.png").ndim == 3
    assert report.verdict in capsys.readouterr().out
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temp files left behind"


def _docs(correct: list[int]) -> dict[int, float]:
    return {i: float(c) for i, c in enumerate(correct)}


def test_a_drop_beyond_the_threshold_is_established_and_noise_is_not():
    rng = random.Random(0)
    base = [1 if rng.random() < 0.5 else 0 for _ in range(1500)]
    # 20% of the base model's right answers turned wrong: a 20% relative drop.
    damaged = [0 if b and rng.random() < 0.2 else b for b in base]
    # About 2% of answers flipped each way: no change in expectation.
    noisy = [1 - b if rng.random() < 0.02 else b for b in base]
    tasks = {"t1": range(0, 750), "t2": range(750, 1500)}

    def per_doc(scores):
        return {t: {i: float(scores[i]) for i in ids} for t, ids in tasks.items()}

    report = build_report("base", ["damaged", "noisy"], list(tasks),
                          {None: per_doc(base), "damaged": per_doc(damaged), "noisy": per_doc(noisy)}, 3.4)
    assert report.per_adapter["damaged"]["verdict"] == "FAIL"
    assert report.per_adapter["damaged"]["group"]["changed"]
    assert report.per_adapter["noisy"]["verdict"] != "FAIL"
    assert report.verdict == "FAIL" and report.passed is False
    lenient = build_report("base", ["damaged"], list(tasks), {None: per_doc(base), "damaged": per_doc(damaged)}, 60.0)
    assert lenient.verdict == "PASS"
    # With a single doc per task nothing can be resolved either way.
    tiny = build_report("base", ["a"], ["t"], {None: {"t": _docs([1])}, "a": {"t": _docs([0])}}, 3.4)
    assert tiny.verdict == "INCONCLUSIVE"


# (d) bad input ------------------------------------------------------------

def test_unknown_bigbench_task_is_a_clear_error(bigbench_tasks):
    with pytest.raises(BakingError, match="no BIG-bench task 'implicature' .*did you mean implicatures"):
        bigbench.ensure_bigbench_tasks(["implicature"])


def test_corrupt_archive_in_the_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(bigbench.BIGBENCH_DIR_ENV, str(tmp_path / "bigbench"))
    archive = tmp_path / "bigbench" / bigbench.SDIST_NAME
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"\x1f\x8b truncated download")

    with pytest.raises(BakingError, match="incomplete or corrupt .*delete it"):
        bigbench.ensure_bigbench_tasks([BIGBENCH_TASK])


def test_corrupt_task_file_in_the_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(bigbench.BIGBENCH_DIR_ENV, str(tmp_path / "bigbench"))
    broken = bigbench.task_file(BIGBENCH_TASK)
    broken.parent.mkdir(parents=True)
    broken.write_text('{"examples": [')

    with pytest.raises(BakingError, match="not a readable task.json"):
        bigbench.load_bigbench(BIGBENCH_TASK)


def test_unknown_lm_eval_task_and_non_adapter_are_clear_errors(tmp_path, tiny_model_dir):
    (tmp_path / "plain").mkdir()  # beside the output: an output inside an input is refused before this check
    with pytest.raises(BakingError, match="not a PEFT adapter directory"):
        forgetting_matrix(str(tiny_model_dir), [str(tmp_path / "plain")], [LM_EVAL_TASK], tmp_path / "out")
    with pytest.raises(BakingError, match="unknown lm_eval task 'baking_forgetting_date_understandin'"):
        expand_tasks(task_manager_for([LM_EVAL_TASK]), ["baking_forgetting_date_understandin"])


def test_a_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(bigbench.BIGBENCH_DIR_ENV, str(tmp_path / "bigbench"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip finds no package index, as on a machine without network

    with pytest.raises(BakingError, match="pip could not find bigbench==1.0.0 .*put it at"):
        bigbench.ensure_bigbench_tasks(["date_understanding"])  # arithmetic/ tasks are generated instead
    assert not list((tmp_path / "bigbench").glob("*.tar.gz")), "no partial archive left behind"


def _local_index(folder: Path, version: str, install_requires: list[str]) -> Path:
    """A find-links folder holding one small `bigbench` sdist with a task.json, as the real one lays them out."""
    root = folder / "src" / f"bigbench-{version}"
    task = root / "bigbench" / "benchmark_tasks" / ARCHIVE_TASK
    task.mkdir(parents=True)
    (task / "task.json").write_text(json.dumps({"name": "tiny", "examples": [
        {"input": "1 + 1 =", "target_scores": {"2": 1, "3": 0}}]}))
    (root / "setup.py").write_text(f"import setuptools\nsetuptools.setup(name='bigbench', version='{version}', "
                                   f"packages=[], install_requires={install_requires!r})\n")
    index = folder / "index"
    index.mkdir()
    import tarfile
    with tarfile.open(index / f"bigbench-{version}.tar.gz", "w:gz") as tar:
        tar.add(root, arcname=root.name)
    return index


def _use_index(monkeypatch, tmp_path, index: Path, version: str) -> None:
    monkeypatch.setattr(bigbench, "bigbench_dir", lambda: tmp_path / "cache" / "bigbench")
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # the user's pip settings reach pip: here, only this folder
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setattr(bigbench, "SDIST_REQUIREMENT", f"bigbench=={version}")
    monkeypatch.setattr(bigbench, "SDIST_NAME", f"bigbench-{version}.tar.gz")


def test_the_archive_comes_from_pip_with_the_users_settings(tmp_path, monkeypatch):
    # A `name @ file://` dependency does not stop pip 26 from keeping an sdist with --no-deps.
    index = _local_index(tmp_path, "9.9.1", ["numpy", "t5 @ file:///nowhere/t5"])
    _use_index(monkeypatch, tmp_path, index, "9.9.1")
    monkeypatch.setattr(bigbench, "SDIST_SHA256", sha256_file(index / "bigbench-9.9.1.tar.gz"))

    bigbench.ensure_bigbench_tasks([ARCHIVE_TASK])
    assert bigbench.convert_task(bigbench.task_file(ARCHIVE_TASK))[0]["label"] in (0, 1)
    assert (tmp_path / "cache" / "bigbench" / "bigbench-9.9.1.tar.gz").is_file()
    assert [p.name for p in (tmp_path / "cache" / "bigbench").iterdir() if p.name.startswith(".")] == []


def test_an_archive_pip_will_not_keep_or_with_the_wrong_hash_is_a_clear_error(tmp_path, monkeypatch):
    # Metadata that setuptools rejects: pip builds it, fails, and leaves nothing in --dest.
    index = _local_index(tmp_path, "9.9.2", ["file:///nowhere/t5"])
    _use_index(monkeypatch, tmp_path, index, "9.9.2")
    with pytest.raises(BakingError, match="pip could not find bigbench==9.9.2 or would not keep it .*put it at"):
        bigbench.ensure_bigbench_tasks([ARCHIVE_TASK])

    good = _local_index(tmp_path / "good", "9.9.2", [])
    monkeypatch.setenv("PIP_FIND_LINKS", str(good))
    with pytest.raises(BakingError, match="downloaded bigbench-9.9.2.tar.gz has the wrong sha256"):
        bigbench.ensure_bigbench_tasks([ARCHIVE_TASK])
    assert list((tmp_path / "cache" / "bigbench").iterdir()) == [], "nothing left behind"
