"""Every one of our lm_eval tasks refuses an adapter baked on another base, in one line (issue 22, item 6).

lm_eval hands --model_args (pretrained=, peft=) to each task's dataset function as metadata, so every
family checks the `peft=` bake against `pretrained=` (artifacts.safety.check_base) before it reads a doc:
baking_mckl, baking_persona_drift, baking_forgetting_*, baking_fewshot_*; `forgetting` and `cross-task`
check their adapters before any model loads. The models here are two config.json files and a few bytes
of "weights": check_base hashes files, it loads nothing, so each test takes milliseconds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from lm_eval_baking.constants import ADAPTER_CONFIG, ADAPTER_WEIGHTS, BAKE_FORMAT, BAKE_RECORD
from lm_eval_baking.core import models
from lm_eval_baking.errors import BakingError



def fake_base(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "seed": seed}))
    (folder / "model.safetensors").write_bytes(bytes([seed]) * 64)
    return folder


def fake_bake(folder: Path, base: Path) -> Path:
    """A bake folder as check_adapter sees one: adapter files plus a baking.json naming `base`'s hashes."""
    folder.mkdir(parents=True)
    (folder / ADAPTER_CONFIG).write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(base)}))
    save_file({"base_model.model.lm_head.lora_A.weight": np.zeros((2, 4), dtype=np.float32)},
              str(folder / ADAPTER_WEIGHTS))
    record = {"format": BAKE_FORMAT, "format_version": 1, "base_model": {
        "name_or_path": str(base), "sha256": models.model_fingerprint(base),
        "config_sha256": models.config_fingerprint(base)}}
    (folder / BAKE_RECORD).write_text(json.dumps(record))
    return folder


@pytest.fixture
def bases(tmp_path, monkeypatch):
    monkeypatch.setenv("LM_EVAL_BAKING_CACHE", str(tmp_path / "cache"))
    baked_on, other = fake_base(tmp_path / "base", 1), fake_base(tmp_path / "other", 2)
    return baked_on, other, fake_bake(tmp_path / "bake", baked_on)


def refused(bake: Path, other: Path) -> str:
    """The one line check_base prints (a regex): which adapter, its base's hash, the other base, and the fix."""
    return (rf"^{re.escape(str(bake))} was baked on a different base model \(.+, sha256 [0-9a-f]{{12}}\) than "
            rf"{re.escape(str(other))} \(config sha256 [0-9a-f]{{12}}\); load it on the base it was baked on, or "
            rf"re-bake the prompt with --model {re.escape(str(other))}$")


def test_baking_mckl_refuses_another_base_before_reading_its_data(bases):
    from lm_eval_baking.evals.lm_tasks import mckl_dataset

    base, other, bake = bases
    with pytest.raises(BakingError, match=refused(bake, other)):
        mckl_dataset(pretrained=str(other), peft=str(bake))
    # On its own base the check passes, and the missing held-out data is what is reported.
    with pytest.raises(BakingError) as error:
        mckl_dataset(pretrained=str(base), peft=str(bake))
    assert "different base" not in str(error.value)


def test_baking_persona_drift_refuses_another_base(bases):
    from lm_eval_baking.evals.lm_tasks import drift_dataset

    base, other, bake = bases
    with pytest.raises(BakingError, match=refused(bake, other)):
        drift_dataset(pretrained=str(other), peft=str(bake))
    with pytest.raises(BakingError, match="drift_docs.jsonl not found"):
        drift_dataset(pretrained=str(base), peft=str(bake))


@pytest.mark.parametrize("loader", ["load_bigbench", "load_bigbench_generative"])
def test_forgetting_and_fewshot_tasks_refuse_another_base_before_any_download(bases, monkeypatch, loader):
    """baking_forgetting_* (multiple choice) and baking_fewshot_* (generative) share the BIG-bench loaders."""
    from lm_eval_baking.evals import bigbench

    base, other, bake = bases
    reached = []
    monkeypatch.setattr(bigbench, "ensure_bigbench_tasks", lambda names: reached.append(names) or 1 / 0)
    load = getattr(bigbench, loader)
    # lm_eval calls the loader with the task's dataset_kwargs and its metadata (model args included).
    with pytest.raises(BakingError, match=refused(bake, other)):
        load(task_name="date_understanding", pretrained=str(other), peft=str(bake), version=1.0)
    assert reached == []
    with pytest.raises(ZeroDivisionError):  # on its own base the loader goes on to the task files
        load(task_name="date_understanding", pretrained=str(base), peft=str(bake), version=1.0)
    assert reached == [["date_understanding"]]


def test_the_lm_eval_task_yamls_all_load_through_a_checked_dataset():
    """A task added to tasks/ without a checked loader would score any adapter silently."""
    import yaml

    from lm_eval_baking.core.harness import tasks_path

    checked = {"lm_eval_baking.evals.lm_tasks.mckl_dataset", "lm_eval_baking.evals.lm_tasks.drift_dataset",
               "lm_eval_baking.evals.bigbench.load_bigbench", "lm_eval_baking.evals.bigbench.load_bigbench_generative"}

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    loaders = {}
    for path in sorted(tasks_path().rglob("*")):
        if path.is_file() and (path.suffix == ".yaml" or path.name.endswith("_yaml")):
            config = yaml.load(path.read_text(), Loader=Loader) or {}
            if "custom_dataset" in config:
                loaders[path.name] = config["custom_dataset"]
    assert loaders and set(loaders.values()) <= checked, loaders


def test_forgetting_refuses_another_base_before_any_model_loads(bases, tmp_path):
    from lm_eval_baking.evals.forgetting import score_models

    base, other, bake = bases
    with pytest.raises(BakingError, match=refused(bake, other)):
        score_models(str(other), [str(bake)], ["baking_forgetting"], progress=False)


def test_cross_task_refuses_a_bake_of_another_base_before_any_work(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from lm_eval_baking.cli import main

    monkeypatch.setenv("LM_EVAL_BAKING_CACHE", str(tmp_path / "cache"))
    bake = fake_bake(tmp_path / "bake", fake_base(tmp_path / "base", 1))
    code = main(["cross-task", "--tasks", "baking_fewshot_plural", "baking_fewshot_negation", "--bake",
                 f"baking_fewshot_plural={bake}", "--model", str(tiny_model_dir), "-o", str(tmp_path / "out"),
                 "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"lm-eval-baking: error: {bake} was baked on a different base model")
    assert not (tmp_path / "out" / "bakes").exists()


# ---------------------------------------------------------------------------- broken peft= folders


def shaped_base(folder: Path, hidden: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": hidden}))
    save_file({"model.layers.0.self_attn.q_proj.weight": np.zeros((hidden, hidden), dtype=np.float32),
               "model.layers.0.mlp.c_fc.weight": np.zeros((hidden, 3 * hidden), dtype=np.float32)},
              str(folder / "model.safetensors"))
    return folder


def shaped_adapter(folder: Path, hidden: int, base_name: str) -> Path:
    """A plain PEFT LoRA (no baking.json) on q_proj (a Linear) and c_fc (GPT-2's Conv1D: weight is [in, out])."""
    folder.mkdir(parents=True)
    (folder / ADAPTER_CONFIG).write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": base_name}))
    prefix = "base_model.model.model.layers.0"
    save_file({f"{prefix}.self_attn.q_proj.lora_A.weight": np.zeros((2, hidden), dtype=np.float32),
               f"{prefix}.self_attn.q_proj.lora_B.weight": np.zeros((hidden, 2), dtype=np.float32),
               f"{prefix}.mlp.c_fc.lora_A.weight": np.zeros((2, hidden), dtype=np.float32),
               f"{prefix}.mlp.c_fc.lora_B.weight": np.zeros((3 * hidden, 2), dtype=np.float32)},
              str(folder / ADAPTER_WEIGHTS))
    return folder


def test_an_adapter_of_other_shapes_is_refused_in_one_line_before_peft(tmp_path, monkeypatch):
    from lm_eval_baking.artifacts.safety import check_adapter
    from lm_eval_baking.evals.forgetting import score_models

    monkeypatch.setenv("LM_EVAL_BAKING_CACHE", str(tmp_path / "cache"))
    small, wide = shaped_base(tmp_path / "small", 32), shaped_base(tmp_path / "wide", 64)
    adapter = shaped_adapter(tmp_path / "adapter", 64, "org/wide-model")
    check_adapter(adapter, base_model=wide)  # fits its own base, Linear and Conv1D alike
    line = (f"{adapter} does not fit {small}: its LoRA on 'model.layers.0.mlp.c_fc' is for a 64->192 layer, "
            "the base's weight there is 32x96; load it on the base it was made for "
            "(adapter_config.json names org/wide-model)")
    with pytest.raises(BakingError) as error:
        check_adapter(adapter, base_model=small)
    assert str(error.value).replace("'", "") == line.replace("'", "")
    with pytest.raises(BakingError, match=re.escape(f"{adapter} does not fit {small}")):
        score_models(str(small), [str(adapter)], ["baking_forgetting"], progress=False)


@pytest.mark.parametrize("make, message", [
    (lambda d: d.mkdir(), "is not a PEFT adapter directory (no adapter_config.json)"),
    (lambda d: (d.mkdir(), (d / ADAPTER_CONFIG).write_text('{"peft_type": "LORA", "r": ')),
     "adapter_config.json is damaged (not a JSON object)"),
    (lambda d: (d.mkdir(), (d / ADAPTER_CONFIG).write_text("{}"), (d / ADAPTER_WEIGHTS).write_bytes(b"\0" * 9)),
     "adapter_model.safetensors is not a readable safetensors file"),
])
def test_our_commands_refuse_a_broken_adapter_folder_before_any_model_loads(tmp_path, monkeypatch, make, message):
    from lm_eval_baking.evals.forgetting import score_models

    monkeypatch.setenv("LM_EVAL_BAKING_CACHE", str(tmp_path / "cache"))
    base = shaped_base(tmp_path / "base", 32)
    make(tmp_path / "broken")
    with pytest.raises(BakingError, match=re.escape(message)):
        score_models(str(base), [str(tmp_path / "broken")], ["baking_forgetting"], progress=False)
