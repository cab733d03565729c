"""The base-model store: the base model's results reused across adapters, runs and pipelines, never on a change.

Each test has a store of its own (monkeypatched $LM_EVAL_BAKING_BASE_STORE). The lm_eval runs use the tiny
random model and conftest's synthetic BIG-bench data, so they take seconds and their scores mean nothing.
"""

from __future__ import annotations

import json
import shutil

import pytest

from lm_eval_baking.artifacts import base_store
from lm_eval_baking.artifacts.records import BaseResultRecord, LmEvalRunStamp
from lm_eval_baking.constants import BASE_SCORES, BASE_STORE_ENV
from lm_eval_baking.core.harness import LmEvalRun
from lm_eval_baking.evals import bigbench
from lm_eval_baking.evals import forgetting as evals_forgetting
from lm_eval_baking.evals.forgetting import TaskScores
from lm_eval_baking.workflows import base_reuse, lm_eval_runs
from lm_eval_baking.workflows.base_reuse import ScoresStore
from lm_eval_baking.workflows.forgetting import forgetting_matrix

TASK = "baking_forgetting_arithmetic_1_digit_addition"
BIGBENCH_TASK = "arithmetic/1_digit_addition"
SETTINGS = {"limit": 4, "batch_size": 4, "device": "cpu", "dtype": None, "num_fewshot": None,
            "apply_chat_template": False, "fewshot_as_multiturn": False}
SCORES = TaskScores(TASK, "acc", {0: 1.0, 1: 0.0, 2: 1.0, 3: 1.0}, 0.75, 0.25)


@pytest.fixture
def store(tmp_path, monkeypatch):
    root = tmp_path / "store"
    monkeypatch.setenv(BASE_STORE_ENV, str(root))
    return root


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dir):
    """Two different random LoRAs on the tiny model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folders = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        folder = tmp_path_factory.mktemp("adapters") / f"lora-{seed}"
        get_peft_model(model, config).save_pretrained(folder)
        folders.append(folder)
    return folders


@pytest.fixture
def model_copy(tmp_path, tiny_model_dir):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    return folder


def _count_base_loads(monkeypatch) -> list:
    """Every model `score_models` loads, by its adapter (None: the base model)."""
    loads = []
    real = evals_forgetting.load_lm

    def counting(base, adapter, *args):
        loads.append(adapter)
        return real(base, adapter, *args)

    monkeypatch.setattr(evals_forgetting, "load_lm", counting)
    return loads


# ---------------------------------------------------------------------------- reuse across adapters

def test_a_second_adapters_forgetting_run_reuses_the_base_models_scores(store, adapters, tiny_model_dir, tmp_path,
                                                                        monkeypatch, capsys):
    loads = _count_base_loads(monkeypatch)
    first = forgetting_matrix(tiny_model_dir, [adapters[0]], [TASK], tmp_path / "one", limit=4, batch_size=4,
                              progress=False)
    assert loads == [None, str(adapters[0])] and first.base_reused == []
    assert len(list(store.iterdir())) == 1

    loads.clear()
    second = forgetting_matrix(tiny_model_dir, [adapters[1]], [TASK], tmp_path / "two", limit=4, batch_size=4,
                               progress=False)
    assert loads == [str(adapters[1])], "the base model was scored again"
    assert second.base_reused == [TASK]
    assert second.per_doc["base"] == first.per_doc["base"]
    assert "reused from the base-model store" in capsys.readouterr().out
    report = json.loads((tmp_path / "two" / "forgetting.json").read_text())
    assert report["base_reused"] == [TASK] and report["per_doc"]["base"] == first.per_doc["base"]


def test_no_reuse_base_scores_the_base_again_and_stores_nothing(store, adapters, tiny_model_dir, tmp_path,
                                                                 monkeypatch):
    loads = _count_base_loads(monkeypatch)
    forgetting_matrix(tiny_model_dir, [adapters[0]], [TASK], tmp_path / "one", limit=4, batch_size=4,
                      progress=False, reuse_base=False)
    assert loads == [None, str(adapters[0])] and not store.exists()


def test_an_unwritable_store_costs_the_reuse_not_the_run(tmp_path, adapters, tiny_model_dir, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(BASE_STORE_ENV, str(blocker / "store"))
    report = forgetting_matrix(tiny_model_dir, [adapters[0]], [TASK], tmp_path / "one", limit=4, batch_size=4,
                               progress=False)
    assert report.verdict in ("PASS", "FAIL", "INCONCLUSIVE")
    warnings = [line for line in capsys.readouterr().err.splitlines() if "base-model store" in line]
    assert len(warnings) == 1 and warnings[0].startswith("lm-eval-baking: warning: cannot write")


def test_an_unwritable_store_says_so_once_however_many_results(tmp_path, model_copy, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(BASE_STORE_ENV, str(blocker / "store"))
    store = ScoresStore(str(model_copy), dict(SETTINGS))
    for task in (TASK, "baking_forgetting_date_understanding"):
        store.put(task, SCORES)
        assert store.get(task) is None
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- never reused on a change

def _stored(model) -> ScoresStore:
    ScoresStore(str(model), dict(SETTINGS)).put(TASK, SCORES)
    return ScoresStore(str(model), dict(SETTINGS))


def test_an_unchanged_key_finds_its_entry(store, model_copy):
    found = _stored(model_copy).get(TASK)
    assert found == SCORES


def test_changed_weights_are_not_reused(store, model_copy):
    import torch
    from safetensors.torch import load_file, save_file

    _stored(model_copy)
    weights = model_copy / "model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + torch.ones_like(tensors[name]) * 1e-3
    save_file(tensors, weights, metadata={"format": "pt"})
    assert ScoresStore(str(model_copy), dict(SETTINGS)).get(TASK) is None


def test_a_changed_tokenizer_file_is_not_reused(store, model_copy):
    _stored(model_copy)
    config = model_copy / "tokenizer_config.json"
    config.write_text(config.read_text() + " ")
    assert ScoresStore(str(model_copy), dict(SETTINGS)).get(TASK) is None


@pytest.mark.parametrize("change", [{"limit": 5}, {"batch_size": 8}, {"device": "cuda:0"}, {"dtype": "bfloat16"},
                                    {"apply_chat_template": True}, {"num_fewshot": 2}])
def test_a_changed_setting_is_not_reused(store, model_copy, change):
    _stored(model_copy)
    assert ScoresStore(str(model_copy), {**SETTINGS, **change}).get(TASK) is None


def test_another_task_or_few_shot_count_is_not_reused(store, model_copy):
    _stored(model_copy).put(TASK, SCORES, num_fewshot=3)
    found = ScoresStore(str(model_copy), dict(SETTINGS))
    assert found.get("baking_forgetting_date_understanding") is None
    assert found.get(TASK, num_fewshot=2) is None and found.get(TASK, num_fewshot=3) == SCORES


def test_a_changed_task_file_is_not_reused(store, model_copy, tmp_path, monkeypatch):
    tasks = tmp_path / "tasks"
    shutil.copytree(base_reuse.tasks_path(), tasks, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(base_reuse, "tasks_path", lambda: tasks)
    _stored(model_copy)
    template = tasks / "baking_forgetting" / "_bigbench_mc_template_yaml"
    template.write_text(template.read_text() + "\n# changed\n")
    assert ScoresStore(str(model_copy), dict(SETTINGS)).get(TASK) is None


def test_a_changed_data_file_is_not_reused(store, model_copy, tmp_path, monkeypatch):
    data = tmp_path / "bigbench"
    shutil.copytree(bigbench.bigbench_dir(), data)
    monkeypatch.setenv(bigbench.BIGBENCH_DIR_ENV, str(data))
    _stored(model_copy)
    task_json = bigbench.task_file(BIGBENCH_TASK)
    content = json.loads(task_json.read_text())
    content["examples"] = content["examples"][1:]
    task_json.write_text(json.dumps(content))
    assert ScoresStore(str(model_copy), dict(SETTINGS)).get(TASK) is None


@pytest.mark.parametrize("library", ["lm_eval", "transformers", "torch"])
def test_another_library_version_is_not_reused(store, model_copy, monkeypatch, library):
    _stored(model_copy)
    real = base_reuse.library_versions
    monkeypatch.setattr(base_reuse, "library_versions", lambda: {**real(), library: "0.0.1"})
    assert ScoresStore(str(model_copy), dict(SETTINGS)).get(TASK) is None


# ---------------------------------------------------------------------------- damaged entries

def _entry(store_root):
    (entry,) = [p for p in store_root.iterdir() if not p.name.startswith(".")]
    return entry


@pytest.mark.parametrize("damage", [
    lambda entry: (entry / BASE_SCORES).write_text((entry / BASE_SCORES).read_text().replace("0.75", "0.5")),
    lambda entry: (entry / BASE_SCORES).unlink(),
    lambda entry: (entry / BaseResultRecord.FILE).write_text('{"format": "lm-eval-baking/base-r'),
    lambda entry: (entry / BaseResultRecord.FILE).unlink(),
    lambda entry: (entry / "extra.json").write_text("{}"),
])
def test_a_damaged_entry_is_never_used_and_the_next_run_replaces_it(store, model_copy, damage):
    _stored(model_copy)
    damage(_entry(store))
    assert ScoresStore(str(model_copy), dict(SETTINGS)).get(TASK) is None
    assert _stored(model_copy).get(TASK) == SCORES


def test_a_half_written_entry_is_never_used(store, model_copy, monkeypatch):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(BaseResultRecord, "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        ScoresStore(str(model_copy), dict(SETTINGS)).put(TASK, SCORES)
    monkeypatch.undo()
    monkeypatch.setenv(BASE_STORE_ENV, str(store))
    assert ScoresStore(str(model_copy), dict(SETTINGS)).get(TASK) is None
    assert not store.exists() or not [p for p in store.iterdir() if not p.name.startswith(".")]


def test_an_entry_of_another_key_is_not_used(store, model_copy):
    _stored(model_copy)
    entry = _entry(store)
    record = json.loads((entry / BaseResultRecord.FILE).read_text())
    record["inputs"]["settings"]["limit"] = 9  # the record no longer says what the key was made of
    (entry / BaseResultRecord.FILE).write_text(json.dumps(record))
    assert ScoresStore(str(model_copy), dict(SETTINGS)).get(TASK) is None


# ---------------------------------------------------------------------------- lm_eval CLI runs (the pipeline)

def _fake_lm_eval(monkeypatch) -> list:
    """run_child standing in for lm_eval: writes a results file into --output_path, counts its calls."""
    calls = []

    def fake(argv, env=None):
        calls.append(argv)
        out = lm_eval_runs.Path(argv[argv.index("--output_path") + 1])
        metadata = json.loads(argv[argv.index("--metadata") + 1]) if "--metadata" in argv else {}
        (out / "model").mkdir(parents=True, exist_ok=True)
        (out / "model" / "results_1.json").write_text(json.dumps({"calls": len(calls), "metadata": metadata}))
        (out / "model" / "samples_task_1.jsonl").write_text(json.dumps({"doc": 1}) + "\n")
        return 0

    monkeypatch.setattr(lm_eval_runs, "run_child", fake)
    monkeypatch.setattr(lm_eval_runs, "lm_eval_executable", lambda: "lm_eval")
    return calls


def test_a_base_lm_eval_run_is_reused_by_another_pipeline_and_says_so(store, model_copy, tmp_path, monkeypatch,
                                                                      capsys):
    calls = _fake_lm_eval(monkeypatch)
    data = tmp_path / "docs.jsonl"
    data.write_text('{"q": 1}\n')
    run = LmEvalRun(base=str(model_copy), tasks=[TASK], dtype="bfloat16", metadata={"max_docs": 5}, log_samples=True)
    assert lm_eval_runs.run_lm_eval(run, tmp_path / "p1" / "base", [data], "forgetting of the base", reuse_base=True)
    assert not lm_eval_runs.run_lm_eval(run, tmp_path / "p2" / "base", [data], "forgetting of the base",
                                        reuse_base=True)
    assert len(calls) == 1
    assert "forgetting of the base: reused from the base-model store" in capsys.readouterr().out
    copied = tmp_path / "p2" / "base" / "model" / "results_1.json"
    assert json.loads(copied.read_text()) == {"calls": 1, "metadata": {"max_docs": 5}}
    assert (copied.parent / "samples_task_1.jsonl").read_text() == '{"doc": 1}\n'
    stamp = LmEvalRunStamp.from_pretrained(tmp_path / "p2" / "base")
    assert stamp.reused_from and str(store) in stamp.reused_from
    assert LmEvalRunStamp.from_pretrained(tmp_path / "p1" / "base").reused_from is None
    # a rerun of the second pipeline keeps what it has
    assert not lm_eval_runs.run_lm_eval(run, tmp_path / "p2" / "base", [data], "forgetting of the base",
                                        reuse_base=True)

    data.write_text('{"q": 2}\n')  # a changed data file: run again
    assert lm_eval_runs.run_lm_eval(run, tmp_path / "p3" / "base", [data], "forgetting", reuse_base=True)
    changed = LmEvalRun(**{**run.__dict__, "metadata": {"max_docs": 6}})  # a changed setting: run again
    assert lm_eval_runs.run_lm_eval(changed, tmp_path / "p4" / "base", [data], "forgetting", reuse_base=True)
    assert lm_eval_runs.run_lm_eval(run, tmp_path / "p5" / "base", [data], "forgetting", reuse_base=False)
    assert len(calls) == 4


def test_a_bake_named_in_metadata_is_keyed_by_its_files_not_its_path(store, model_copy, tmp_path, monkeypatch):
    calls = _fake_lm_eval(monkeypatch)
    bakes = []
    for name in ("one", "two"):
        bake = tmp_path / name / "references" / "pirate"
        (bake / "data").mkdir(parents=True)
        (bake / "data" / "drift_docs.jsonl").write_text('{"turn": 1}\n')
        bakes.append(bake)
    runs = [LmEvalRun(base=str(model_copy), tasks=["baking_persona_drift"], system_instruction="Be a pirate.",
                      metadata={"bake": str(bake)}) for bake in bakes]
    assert lm_eval_runs.run_lm_eval(runs[0], tmp_path / "one" / "drift", [], "drift", reuse_base=True)
    assert not lm_eval_runs.run_lm_eval(runs[1], tmp_path / "two" / "drift", [], "drift", reuse_base=True)
    copied = json.loads((tmp_path / "two" / "drift" / "model" / "results_1.json").read_text())
    assert copied["metadata"] == {"bake": str(bakes[1])}, "the copy names this run's bake folder"
    (bakes[1] / "data" / "drift_docs.jsonl").write_text('{"turn": 2}\n')
    assert lm_eval_runs.run_lm_eval(runs[1], tmp_path / "three" / "drift", [], "drift", reuse_base=True)
    assert len(calls) == 2


def test_an_adapters_run_is_never_stored(store, model_copy, tmp_path, monkeypatch):
    calls = _fake_lm_eval(monkeypatch)
    run = LmEvalRun(base=str(model_copy), tasks=[TASK], adapter=str(tmp_path / "adapter"))
    for name in ("one", "two"):
        assert lm_eval_runs.run_lm_eval(run, tmp_path / name, [], "forgetting of the adapter", reuse_base=True)
    assert len(calls) == 2 and not store.exists()


def test_a_model_that_cannot_be_fingerprinted_runs_without_reuse(store, tmp_path, monkeypatch, capsys):
    calls = _fake_lm_eval(monkeypatch)
    run = LmEvalRun(base=str(tmp_path / "no-such-model"), tasks=[TASK])
    assert lm_eval_runs.run_lm_eval(run, tmp_path / "one", [], "forgetting of the base", reuse_base=True)
    assert len(calls) == 1 and not store.exists()
    assert "cannot fingerprint the base model" in capsys.readouterr().err


def test_the_store_is_under_the_cache_unless_the_variable_says(monkeypatch, tmp_path):
    from lm_eval_baking.core import models

    monkeypatch.delenv(BASE_STORE_ENV, raising=False)
    monkeypatch.setenv("LM_EVAL_BAKING_CACHE", str(tmp_path))
    assert base_store.store_dir() == models.cache_dir() / "lm_eval_base"
    monkeypatch.setenv(BASE_STORE_ENV, str(tmp_path / "elsewhere"))
    assert base_store.store_dir() == tmp_path / "elsewhere"


@pytest.mark.parametrize("command", [["forgetting", "--adapters", "a", "--output", "o"],
                                     ["cross-task", "--tasks", "a,b", "--output", "o"]])
def test_no_reuse_base_is_a_flag_of_forgetting_and_cross_task(command):
    import argparse

    from lm_eval_baking.cli import evaluating

    parser = argparse.ArgumentParser()
    evaluating.register(parser.add_subparsers())
    assert parser.parse_args(command).reuse_base is True
    assert parser.parse_args([*command, "--no-reuse-base"]).reuse_base is False
