"""`pursue`, `strength` and `sequence`: bakes built from bakes."""

from __future__ import annotations

from pathlib import Path

from ..compose.config import ComposeSettings, PursuitSettings
from ..errors import BakingError
from ..training.config import BakeConfig, ResumeSettings
from .baking import add_output_options, add_prompt_options, bake_config
from .options import add_settings, output_path, quiet_libraries, settings_from_args


def register(commands) -> None:
    pursuit = commands.add_parser("pursue", help="prompt pursuit: bake a prompt again into the baked model")
    add_prompt_options(pursuit, task=False)
    add_output_options(pursuit, "folder for round-N/, pursued/ and pursuit.json")
    add_settings(pursuit, PursuitSettings, title="pursuit settings")
    add_settings(pursuit, ResumeSettings)
    add_settings(pursuit, BakeConfig, exclude=("prompt",), title="bake settings of every round (BakeConfig)")
    pursuit.set_defaults(run=_run_pursue)

    strength = commands.add_parser("strength", help="half-baking: scale a bake's adapter by a prompt strength")
    strength.add_argument("bake_dir", type=Path, help="a directory made by `lm-eval-baking bake`")
    strength.add_argument("--strength", required=True, help="0 = base, 1 = the bake, above 1 extrapolates")
    strength.add_argument("--epoch", type=int, help="start from this epoch's checkpoint instead of the final adapter")
    strength.add_argument("--output", "-o", type=output_path, required=True, help="adapter directory to create")
    strength.add_argument("--overwrite", action="store_true",
                          help="replace what lm-eval-baking made at --output (never a folder it did not make)")
    strength.add_argument("--allow-pickle", action="store_true",
                          help="accept an adapter stored only as a pickle (adapter_model.bin); only for trusted files")
    strength.set_defaults(run=_run_strength)

    sequence = commands.add_parser("sequence", help="bake several prompts one after another into one model")
    sequence.add_argument("--prompt", action="append", dest="prompts", required=True, metavar="TEXT",
                          help="a prompt to bake (repeat, in order)")
    sequence.add_argument("--cycles", type=int, default=1, help="times to go through the prompts (default: 1)")
    add_output_options(sequence, "folder for stage-N/, references/, combined/ and sequence.json")
    add_settings(sequence, ComposeSettings, title="composition: what each stage bakes towards")
    add_settings(sequence, ResumeSettings)
    add_settings(sequence, BakeConfig, exclude=("prompt",), title="bake settings of every stage (BakeConfig)")
    sequence.set_defaults(run=_run_sequence)


def _run_pursue(args) -> None:
    config = bake_config(args)
    if not isinstance(config.prompt, str):
        raise BakingError("pursuit bakes a text prompt (a system message); chat-message prompts (.json) are for "
                          "`lm-eval-baking bake`: pass a .txt --prompt-file")
    settings = settings_from_args(PursuitSettings, args)
    from ..artifacts.outputs import check_apart

    check_apart(args.output, [args.prompt_file])
    quiet_libraries()
    from ..compose.pursuit import format_pursuit_table, pursue
    from ..core.harness import LmEvalRun

    result = pursue(config, args.output, max_rounds=settings.max_rounds, min_improvement=settings.min_improvement,
                    evaluator=settings.evaluator, overwrite=args.overwrite, resume=args.resume,
                    progress=not args.quiet, resume_settings=settings_from_args(ResumeSettings, args))
    print("\n" + format_pursuit_table(result))
    command = LmEvalRun(base=result.base_model, adapter=str(result.pursued), tasks=["baking_mckl"]).shell()
    print(f"\nEvaluate it with lm-evaluation-harness:\n  {command}")


def _run_strength(args) -> None:
    from ..artifacts.lora import export_strength, parse_strength

    output = export_strength(args.bake_dir, args.strength, args.output, epoch=args.epoch, overwrite=args.overwrite,
                             allow_pickle=args.allow_pickle)
    print(f"Wrote {output}: {args.bake_dir} at strength {parse_strength(args.strength):g}")


def _run_sequence(args) -> None:
    settings = bake_config(args, prompt=args.prompts[0])  # bake_sequence sets each stage's prompt itself
    quiet_libraries()
    from ..compose.sequence import bake_sequence, format_sequence_table

    result = bake_sequence(args.prompts, settings, args.output, args.cycles,
                           compose=settings_from_args(ComposeSettings, args), overwrite=args.overwrite,
                           resume=args.resume, progress=not args.quiet,
                           resume_settings=settings_from_args(ResumeSettings, args))
    print("\n" + format_sequence_table(result))
