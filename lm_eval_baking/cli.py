"""`lm-eval-baking` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from . import models
from .baking import BakeConfig, bake
from .demo import add_demo_command
from .drift import add_drift_command
from .errors import BakingError
from .forgetting import add_forgetting_command
from .pursuit import add_pursuit_commands
from .resume import ResumeSettings
from .report import add_report_commands
from .tasks import tasks_path


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_library_output()
    try:
        return args.run(args) or 0
    except BakingError as e:
        print(f"lm-eval-baking: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        # bake() re-raises with where its work was kept; a bare Ctrl-C elsewhere has no message.
        detail = str(e) or "nothing was written at the output path"
        print(f"lm-eval-baking: interrupted; {detail}", file=sys.stderr)
        return 130


def _quiet_library_output() -> None:
    """Keep the terminal for our own progress bars and summary, not library chatter."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lm-eval-baking", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    model = commands.add_parser("model", help="prepare a model and print its directory")
    model.add_argument("name", nargs="?", default=models.DEFAULT_MODEL,
                       help="'default' (embedded SmolLM2-135M-Instruct), a HF id or a directory")
    model.set_defaults(run=_run_model)

    paths = commands.add_parser("tasks-path", help="print the lm_eval task folder for --include_path")
    paths.set_defaults(run=lambda args: print(tasks_path()))

    baking = commands.add_parser("bake", help="bake a prompt into a LoRA adapter")
    prompt = baking.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the prompt text to bake in")
    prompt.add_argument("--prompt-file", type=Path, help="a UTF-8 file holding the prompt")
    baking.add_argument("--output", "-o", type=Path, required=True, help="adapter directory to create, e.g. adapters/pirate")
    baking.add_argument("--overwrite", action="store_true", help="replace a different bake already at --output")
    add_resume_options(baking)
    baking.add_argument("--trust-remote-code", action="store_true",
                        help="let a model from the hub run its own Python code (off: only transformers' own code runs)")
    baking.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_options(baking)
    baking.set_defaults(run=_run_bake)

    add_pursuit_commands(commands)
    add_drift_command(commands)
    add_forgetting_command(commands)
    add_report_commands(commands)
    add_demo_command(commands)
    return parser


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per BakeConfig field, named after it, defaulting to it."""
    defaults = BakeConfig(prompt="")
    for field in fields(BakeConfig):
        if field.name == "prompt":
            continue
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        if field.name == "target_modules":
            parser.add_argument(flag, nargs="+", default=default, help=f"(default: {' '.join(default)})")
        elif field.name == "top_k":
            parser.add_argument(flag, type=int, default=None, help="top-k KL instead of full vocabulary")
        elif field.name == "kl_chunk_size":
            parser.add_argument(flag, type=int, default=None, help="LM head + KL this many positions at a time")
        elif isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                                help=f"(default: {default})")
        else:
            parser.add_argument(flag, type=type(default), default=default, help=f"(default: {default})")


def add_resume_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted bake of --output from its last checkpoint (same settings)")
    parser.add_argument("--checkpoint-seconds", type=float, default=ResumeSettings.checkpoint_seconds,
                        help="save the training state at least this often, so a kill loses at most this much "
                             f"training (default: {ResumeSettings.checkpoint_seconds:g}; 0 = every step)")


def _run_model(args) -> None:
    print(models.resolve_model(args.name))


def read_prompt(args) -> str:
    """The prompt from --prompt or --prompt-file."""
    if args.prompt_file is None:
        return args.prompt
    try:
        return args.prompt_file.read_bytes().decode("utf-8-sig")  # a BOM is an editor's, not the prompt's
    except (OSError, UnicodeDecodeError) as e:
        raise BakingError(f"cannot read --prompt-file {args.prompt_file} ({e}); pass a UTF-8 text file") from None


def config_from_args(args, prompt: str) -> BakeConfig:
    settings = {f.name: getattr(args, f.name) for f in fields(BakeConfig) if f.name != "prompt"}
    return BakeConfig(prompt=prompt, **settings)


def _run_bake(args) -> None:
    config = config_from_args(args, read_prompt(args))
    result = bake(config, args.output, overwrite=args.overwrite, resume=args.resume, progress=not args.quiet,
                  trust_remote_code=args.trust_remote_code,
                  resume_settings=ResumeSettings(checkpoint_seconds=args.checkpoint_seconds))
    reused = " (already baked with these settings; reused)" if result.reused else ""
    if result.resumed_from:
        reused = f" (resumed at epoch {result.resumed_from['epoch']}, step {result.resumed_from['step']})"
    print(f"\nBaked adapter: {result.output}{reused}")
    print("held-out KL per answer token, from the prompted base model to:")
    print(f"  unprompted base   {result.reference_kl.per_token:.4f} ± {result.reference_kl.per_token_stderr:.4f}")
    for epoch, kl in enumerate(result.epoch_kl, 1):
        print(f"  baked, epoch {epoch:<4} {kl.per_token:.4f} ± {kl.per_token_stderr:.4f}")
    print(f"  ratio baked/unprompted: {result.kl_ratio:.1%}")
    print("\nEvaluate it with lm-evaluation-harness:")
    print(f"  {result.lm_eval_command()}")


if __name__ == "__main__":
    sys.exit(main())
