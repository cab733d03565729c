"""`model`, `tasks-path` and `bake`."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..constants import DEFAULT_MODEL
from ..errors import BakingError
from ..evals.config import TaskPromptSettings
from ..training.config import BakeConfig, ResumeSettings
from .options import add_settings, output_path, quiet_libraries, settings_from_args


def register(commands) -> None:
    model = commands.add_parser("model", help="prepare a model and print its directory")
    model.add_argument("name", nargs="?", default=DEFAULT_MODEL,
                       help="'default' (the embedded SmolLM2-135M-Instruct), a HF id or a directory")
    model.set_defaults(run=_run_model)

    paths = commands.add_parser("tasks-path", help="print the lm_eval task folder, for --include_path")
    paths.set_defaults(run=_run_tasks_path)

    bake = commands.add_parser("bake", help="bake a prompt into a LoRA adapter")
    add_prompt_options(bake)
    add_output_options(bake, "adapter directory to create, e.g. adapters/pirate")
    add_settings(bake, ResumeSettings)
    bake.add_argument("--trust-remote-code", action="store_true",
                      help="let a model from the hub run its own Python code (off: only transformers' own code runs)")
    add_settings(bake, BakeConfig, exclude=("prompt",), title="bake settings (BakeConfig)")
    add_settings(bake, TaskPromptSettings, title="an lm_eval task's few-shot prompt (with --task)")
    bake.set_defaults(run=_run_bake)


def add_prompt_options(parser: argparse.ArgumentParser, *, task: bool = True) -> None:
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the prompt text to bake in")
    prompt.add_argument("--prompt-file", type=Path, help=(
        "a UTF-8 file holding the prompt: text, or (a .json file) a list of chat messages "
        '[{"role": "system"|"user"|"assistant", "content": ...}] placed before the question'))
    if task:
        prompt.add_argument("--task", metavar="NAME", help=(
            "bake this lm_eval task's own k-shot context (its examples, sampler, split and seed), with its docs "
            "outside the evaluated split as questions (or --questions)"))


def add_output_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--output", "-o", type=output_path, required=True, help=what)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace what lm-eval-baking made at --output (never a folder it did not make)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run of --output from its last checkpoint (same settings)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def read_prompt(args) -> str:
    """The prompt from --prompt or --prompt-file."""
    from ..core.prompts import parse_prompt_file

    if args.prompt_file is None:
        return args.prompt
    try:
        text = args.prompt_file.read_bytes().decode("utf-8-sig")  # a BOM is an editor's, not the prompt's
    except (OSError, UnicodeDecodeError) as e:
        raise BakingError(f"cannot read --prompt-file {args.prompt_file} ({e}); pass a UTF-8 text file") from None
    return parse_prompt_file(text, args.prompt_file.name)


def bake_config(args, prompt: str | None = None) -> BakeConfig:
    return settings_from_args(BakeConfig, args, prompt=read_prompt(args) if prompt is None else prompt)


def _run_model(args) -> None:
    from ..core.models import model_config, resolve_model

    model_config(args.name)  # a name that is no loadable model is an error, not a path to print
    print(resolve_model(args.name))


def _run_tasks_path(args) -> None:
    from ..core.harness import tasks_path

    print(tasks_path())


def _run_bake(args) -> int:
    task = getattr(args, "task", None)
    # Checks every setting before torch is even imported (a task's prompt replaces the placeholder).
    config = bake_config(args, prompt=f"lm_eval task {task}" if task else None)
    task_settings = settings_from_args(TaskPromptSettings, args)
    if not task and any(getattr(args, f) != d for f, d in (("num_fewshot", None), ("include_path", None))):
        raise BakingError("--num-fewshot and --include-path choose an lm_eval task's prompt; pass --task NAME too")
    from ..artifacts.outputs import check_apart

    check_apart(args.output, [args.prompt_file])
    quiet_libraries()
    resume_settings = settings_from_args(ResumeSettings, args)
    if task:
        from ..workflows.task_bake import bake_task

        result = bake_task(task, config, args.output, task_settings, overwrite=args.overwrite, resume=args.resume,
                           progress=not args.quiet, trust_remote_code=args.trust_remote_code,
                           resume_settings=resume_settings)
    else:
        from ..training.bake import bake

        result = bake(config, args.output, overwrite=args.overwrite, resume=args.resume, progress=not args.quiet,
                      trust_remote_code=args.trust_remote_code, resume_settings=resume_settings)
    reused = " (already baked with these settings; reused)" if result.reused else ""
    if result.resumed_from:
        reused = f" (resumed at epoch {result.resumed_from['epoch']}, step {result.resumed_from['step']})"
    print(f"\nBaked adapter: {result.output}{reused}")
    print("held-out KL per answer token, from the prompted base model to:")
    print(f"  unprompted base   {_estimate(result.reference_kl)}")
    for epoch, kl in enumerate(result.epoch_kl, 1):
        print(f"  baked, epoch {epoch:<4} {_estimate(kl)}")
    print(f"  ratio baked/unprompted: {result.kl_ratio:.1%}")
    print(_sizes(result))
    for warning in result.warnings:
        print(f"{'FAILED' if result.status == 'failed' else 'warning'}: {warning}")
    print("\nEvaluate it with lm-evaluation-harness:")
    print(f"  {result.lm_eval_command()}")
    return 1 if result.status == "failed" else 0


def _estimate(kl) -> str:
    if not math.isfinite(kl.per_token_stderr):
        return f"{kl.per_token:.4f} (no stderr: one held-out answer; add questions)"
    return f"{kl.per_token:.4f} ± {kl.per_token_stderr:.4f}"


def _sizes(result) -> str:
    """What the bake trained on and which adapter it kept, from baking.json's "training" and "kl.kept"."""
    training = result.training or {}
    budget, targets = training.get("budget"), training.get("lora_targets")
    parts = []
    if budget and "conversation_turns" in budget:  # a multi-turn bake
        parts.append(f"trained on {budget['trajectories']} answers ({budget['conversation_turns']} conversation "
                     f"turns + {budget['single_turn_answers']} single-turn), {budget['epochs']} epoch(s), "
                     f"{budget['steps']} steps")
    elif budget:
        parts.append(f"trained on {budget['trajectories']} answers ({budget['train_questions']} questions x "
                     f"{budget['samples_per_question']}), {budget['epochs']} epoch(s), {budget['steps']} steps")
    if targets:
        parts.append(f"LoRA on {', '.join(targets['target_modules'])} ({targets['modules']} layers)")
    if result.kept and result.kept.get("step") is not None:
        parts.append(f"kept the adapter of epoch {result.kept['epoch']} step {result.kept['step']}")
    return "; ".join(parts)
