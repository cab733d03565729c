"""lm-eval-baking: bake prompts into PEFT adapters and validate them with lm-evaluation-harness.

    from lm_eval_baking import BakeConfig, bake
    result = bake(BakeConfig(prompt="You are a pirate."), "adapters/pirate")

The package is layered (imports only go down):

    cli/        the `lm-eval-baking` command; nothing imports it
    workflows/  end-to-end jobs: the demo, forgetting runs
    compose/    bakes built from bakes: evaluators, prompt pursuit, sequences
    training/   one bake: BakeConfig, PromptBaker and its loss, resumable work folders, bake()
    evals/      lm_eval tasks' data and classes, personas and drift, forgetting, BIG-bench
    results/    reports and the CI gate (no torch)
    artifacts/  what a bake leaves on disk: the bake folder, adapter safety, chain/strength exports
    core/       tokenization, forward passes, KL, sampling, scoring, statistics
    utils/      atomic writes, JSONL, hashing, one-line text

Names are imported lazily, so `lm-eval-baking report` and `check` never load torch.
"""

from importlib import import_module

_EXPORTS = {
    "BakeConfig": "training.config",
    "ResumeSettings": "training.config",
    "BakeResult": "training.bake",
    "bake": "training.bake",
    "PromptBaker": "training.baker",
    "prompt_baking_loss": "training.baker",
    "BakeRecord": "artifacts.bake_dir",
    "load_bake_record": "artifacts.bake_dir",
    "BakingError": "errors",
    "default_model_dir": "core.models",
    "load_model": "core.models",
    "Question": "core.questions",
    "load_questions": "core.questions",
    "pursue": "compose.pursuit",
    "bake_sequence": "compose.sequence",
    "export_chain": "artifacts.lora",
    "export_strength": "artifacts.lora",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lm_eval_baking' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
