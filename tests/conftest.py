"""Shared fixtures: a tiny random Llama that uses the default model's tokenizer.

Fast unit tests run on `tiny_model_dir`: a real HF model directory (2 layers,
hidden size 32) built from a config, so PEFT, lm_eval and our code all load it
through their normal paths. Tests marked `slow` use the embedded default model. `plain_model_dir`
is the same model without a chat template (a base model as many lm_eval users evaluate).

FEWSHOT_TASKS holds two tiny lm_eval tasks with few-shot splits (tests/evals/fewshot_tasks).
"""

from __future__ import annotations

import os

# Nothing in the test suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The thread count the tests run on is fixed, not fitted to the load (core/threads.py): bf16 results depend
# on it, and a test must give the same numbers whatever else the machine runs. Children inherit it.
os.environ.setdefault("LM_EVAL_BAKING_THREADS", str(os.cpu_count() or 1))

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Property tests draw their cases from a profile. "ci" (the default, and what CI runs) is derandomized:
# every run draws the same cases, so a run can only fail on a change of code. "explore" draws new random
# cases, 1,000 per property: run it on purpose to look for new failures, and pin each one with @example.
#   HYPOTHESIS_PROFILE=explore python -m pytest tests/cli/test_bad_inputs.py
_QUIET_FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
settings.register_profile("ci", max_examples=150, derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=_QUIET_FIXTURES)
settings.register_profile("explore", max_examples=1000, derandomize=False, deadline=None, print_blob=True,
                          suppress_health_check=_QUIET_FIXTURES)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

FEWSHOT_TASKS = os.path.join(os.path.dirname(__file__), "evals", "fewshot_tasks")
PIRATE = "You are a pirate. Start every answer with 'Ahoy!'"
QUESTIONS = "\n".join(f"Tell me fact number {i} about {topic}." for i, topic in enumerate(
    ["cats", "rivers", "bread", "stars", "trains", "music", "rain", "chess", "salt", "maps", "wolves", "glass"]))


# BIG-bench data for the tests. PyPI no longer serves the bigbench 1.0.0 archive the BIG-bench tasks come from, and
# tests reach no network anyway: every BIG-bench task our task folders name gets a synthetic task.json in
# BIG-bench's format (one-digit sums with a target and target_scores, so both converters read it), in a folder of
# its own ($LM_EVAL_BAKING_BIGBENCH), never the user's cache. The lm_eval runs on the tiny model check that the
# harness loads our data and that reports have the right shape, never a score.
SYNTHETIC_BIGBENCH_EXTRA = ("implicatures",)  # listed in the index only, for the "did you mean" test


def synthetic_bigbench_task(name: str) -> dict:
    examples = [{"input": f"What is {a} plus {b}?", "target": str(a + b),
                 "target_scores": {str(a + b): 1.0, str(a + b + 1): 0.0, "banana": 0.0}}
                for a in range(10) for b in range(10)]
    return {"name": name, "description": "synthetic stand-in for tests", "examples": examples}


def bigbench_task_names() -> list[str]:
    """The BIG-bench task behind every task YAML of ours."""
    import yaml

    from lm_eval_baking.core.harness import tasks_path

    class TaskYaml(yaml.SafeLoader):  # lm_eval's `!function` tags are not ours to resolve here
        pass

    TaskYaml.add_multi_constructor("!", lambda loader, suffix, node: None)
    names = set()
    for path in tasks_path().rglob("*.yaml"):
        config = yaml.load(path.read_text(), Loader=TaskYaml) or {}
        name = (config.get("dataset_kwargs") or {}).get("task_name")
        if name:
            names.add(name)
    return sorted(names)


@pytest.fixture(scope="session", autouse=True)
def synthetic_bigbench(tmp_path_factory):
    import json

    from lm_eval_baking.evals import bigbench

    root = tmp_path_factory.mktemp("bigbench")
    names = bigbench_task_names()
    for name in names:
        path = root / "tasks" / name / "task.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(synthetic_bigbench_task(name)))
    (root / bigbench.INDEX_FILE).write_text(json.dumps(sorted([*names, *SYNTHETIC_BIGBENCH_EXTRA])))
    before = os.environ.get(bigbench.BIGBENCH_DIR_ENV)
    os.environ[bigbench.BIGBENCH_DIR_ENV] = str(root)  # os.environ, not monkeypatch: lm_eval children read it
    yield root
    if before is None:
        os.environ.pop(bigbench.BIGBENCH_DIR_ENV, None)
    else:
        os.environ[bigbench.BIGBENCH_DIR_ENV] = before


@pytest.fixture(scope="session", autouse=True)
def base_model_store(tmp_path_factory):
    """The base-model store of the test session: a folder of its own, never the user's cache."""
    from lm_eval_baking.constants import BASE_STORE_ENV

    root = tmp_path_factory.mktemp("lm_eval_base")
    before = os.environ.get(BASE_STORE_ENV)
    os.environ[BASE_STORE_ENV] = str(root)  # os.environ, not monkeypatch: lm_eval children read it
    yield root
    if before is None:
        os.environ.pop(BASE_STORE_ENV, None)
    else:
        os.environ[BASE_STORE_ENV] = before


# The decoder families the bake is tested on (tiny random models: tiny_architecture_config).
ARCHITECTURES = ("gemma", "gpt2", "gpt_neox", "llama", "mistral", "phi3", "qwen2")


def tiny_architecture_config(kind: str, tokenizer):
    """A 2-layer, 32-wide config of `kind` whose vocabulary is the default model's tokenizer."""
    import transformers

    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=512, **ids)
    if kind == "gpt2":
        return transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=512, **ids)
    if kind == "gpt_neox":
        return transformers.GPTNeoXConfig(**common)
    config_class = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
                    "phi3": transformers.Phi3Config, "gemma": transformers.GemmaConfig,
                    "mistral": transformers.MistralConfig}[kind]
    extra = {"head_dim": 8} if kind == "gemma" else {}
    return config_class(num_key_value_heads=2, **common, **extra)


# CLI settings that bake the tiny model in seconds (as tiny_config does for the Python API).
TINY_BAKE = ["--samples-per-question", "2", "--heldout-samples-per-question", "1", "--max-new-tokens", "8",
             "--epochs", "1", "--batch-size", "4", "--lora-rank", "4", "--lora-alpha", "8", "--precision", "fp32",
             "--quiet"]


def run(capsys, *args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of the CLI run in-process on `args`."""
    from lm_eval_baking.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    """The one `lm-eval-baking: error:` line that stderr must be."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lm-eval-baking: error: "), err
    return lines[0]


def tiny_config(tiny_model_dir, question_file, **overrides):
    """A BakeConfig small enough to bake the tiny model in seconds (12 questions, 8-token answers)."""
    from lm_eval_baking import BakeConfig

    settings = dict(prompt=PIRATE, model=str(tiny_model_dir), questions=str(question_file), heldout_fraction=0.25,
                    samples_per_question=2, heldout_samples_per_question=1, max_new_tokens=8, epochs=2, batch_size=4, learning_rate=2e-2,
                    lora_rank=4, lora_alpha=8, precision="fp32", seed=0)
    settings.update(overrides)
    return BakeConfig(**settings)


def bake_flags(config) -> list[str]:
    """`lm-eval-baking bake` flags for exactly `config` (a BakeConfig; its prompt left out), nested settings
    (BakeConfig.multi_turn) by their own flags."""
    from dataclasses import fields

    flags = []

    def add(settings):
        for f in fields(settings):
            value = getattr(settings, f.name)
            if f.name == "prompt" or value is None:
                continue
            if f.metadata.get("nested"):
                add(value)
                continue
            flag = "--" + f.metadata.get("flag", f.name).replace("_", "-")
            if isinstance(value, bool):
                flags.append(flag if value else "--no-" + flag[2:])
            elif isinstance(value, list):
                flags.extend([flag, *map(str, value)])
            else:
                flags.extend([flag, str(value)])

    add(config)
    return flags


@pytest.fixture(scope="session")
def default_model_dir():
    from lm_eval_baking.core.models import default_model_dir as prepare

    return prepare()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_model_dir):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def plain_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with its chat template removed: a base model as many lm_eval users evaluate."""
    import json
    import shutil

    path = tmp_path_factory.mktemp("tiny-plain")
    shutil.copytree(tiny_model_dir, path, dirs_exist_ok=True)
    (path / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="session")
def question_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("questions") / "questions.txt"
    path.write_text(QUESTIONS)
    return path


@pytest.fixture(scope="session")
def small_bake(tiny_model_dir, question_file, tmp_path_factory):
    """A finished one-epoch bake of the tiny model (its folder), for tests that read or load a bake."""
    from lm_eval_baking import bake

    return bake(tiny_config(tiny_model_dir, question_file, epochs=1), tmp_path_factory.mktemp("small") / "pirate",
                progress=False).output


FRENCH = "Always respond in French."
# One task of the forgetting group is enough to exercise the paired comparison on the tiny model.
FORGETTING_TASK = "baking_forgetting_arithmetic_1_digit_addition"


def tiny_recipe(root, tiny_model_dir, question_file) -> dict:
    """A two-prompt, two-cycle recipe with pursuit and every validation, small enough for the tiny model."""
    bake = {key: value for key, value in tiny_config(tiny_model_dir, question_file, epochs=1).to_dict().items()
            if key not in ("prompt", "model")}
    pursuit = {"max_rounds": 2, "min_improvement": 0.0, "evaluator": "quality"}
    return {
        "model": str(tiny_model_dir), "output": str(root / "run"), "cycles": 2, "bake": bake,
        "stages": [{"name": "pirate", "prompt": PIRATE, "pursuit": pursuit},
                   {"name": "french", "prompt": FRENCH, "pursuit": pursuit}],
        "validation": {
            "batch_size": 8, "mckl": {"min_quality": -100.0, "max_kl": 100.0},
            # 25 turns of 2 tokens fit the tiny model's 512-token context.
            "drift": {"stage": "french", "persona": "french", "max_drift": 1.0, "conversations": 2, "turns": 25,
                      "max_new_tokens": 2, "probes_at": [1, 25], "sampled_answers": 1},
            "forgetting": {"tasks": [FORGETTING_TASK], "max_forgetting_drop_pct": 50.0, "max_docs": 4},
        },
    }


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_model_dir, question_file, tmp_path_factory):
    """The tiny recipe run once through `run_pipeline`: real bakes, pursuits and `lm_eval` runs."""
    from lm_eval_baking.workflows.pipeline import run_pipeline
    from lm_eval_baking.workflows.recipe import parse_recipe

    recipe = parse_recipe(tiny_recipe(tmp_path_factory.mktemp("pipeline"), tiny_model_dir, question_file))
    return recipe, run_pipeline(recipe, progress=False)


@pytest.fixture
def isolated_evaluate(tmp_path_factory, monkeypatch):
    """`evaluate` offline, its module copies and caches in a temporary folder, our comparison module loaded anew."""
    import evaluate

    from lm_eval_baking.results.evaluate_module import paired_comparison

    home = tmp_path_factory.getbasetemp() / "hf-evaluate"
    for name, value in {"HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}.items():
        monkeypatch.setenv(name, value)
    # evaluate reads these once, at import; another test may have imported it already.
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    monkeypatch.setattr(evaluate.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
    for name in ("HF_MODULES_CACHE", "HF_EVALUATE_CACHE", "HF_METRICS_CACHE"):
        monkeypatch.setattr(evaluate.config, name, home / name.lower())
    paired_comparison.cache_clear()
    yield home
    paired_comparison.cache_clear()
