"""`drift-data` and `forgetting`: data for, and runs of, the validations."""

from __future__ import annotations

from pathlib import Path

from ..core.verdicts import EXIT_CODES
from ..evals.config import ConversationSettings, ForgettingSettings, TaskPromptSettings
from ..training.config import BakeConfig
from ..workflows.settings import CrossTaskSettings
from ..evals.drift import DEFAULT_PROBES_AT
from ..evals.personas import persona_names
from .options import add_settings, output_path, quiet_libraries, refuse_renamed, settings_from_args


def register(commands) -> None:
    drift = commands.add_parser(
        "drift-data", help="generate persona-drift conversations for a bake and print the lm_eval commands",
        description="Persona drift (Li et al. 2024): the prompted base model chats with a simulated user; the "
                    "conversation and the probe docs are stored with the bake for the baking_persona_drift task.",
        epilog=f"built-in personas: {', '.join(persona_names())}",
    )
    drift.add_argument("bake_dir", type=Path, help="a directory made by `lm-eval-baking bake`")
    drift.add_argument("--persona", action="append", dest="personas", metavar="NAME",
                       help="persona to test (repeatable); default: the one whose system prompt is the baked prompt")
    drift.add_argument("--persona-file", type=Path,
                       help="JSON/YAML list of personas {name, system_prompt, scorer, probes?, references?}")
    drift.add_argument("--probes-at", type=int, nargs="+", default=list(DEFAULT_PROBES_AT),
                       help=f"turns after which the probes are asked (default: {' '.join(map(str, DEFAULT_PROBES_AT))})")
    add_settings(drift, ConversationSettings, exclude=("user_prompt",), title="conversation settings")
    drift.add_argument("--quiet", action="store_true", help="no progress bars")
    drift.set_defaults(run=_run_drift_data)

    forgetting = commands.add_parser(
        "forgetting", help="measure cross-task forgetting of baked adapters, paired per doc",
        description="Exit 0 when every adapter passes, 1 when one fails, 3 when none fails but one is inconclusive, "
                    "2 on bad input.")
    forgetting.add_argument("--adapters", nargs="+", required=True, metavar="DIR", help="PEFT adapter directories")
    forgetting.add_argument("--output", "-o", type=output_path, required=True,
                            help="folder for forgetting.json and forgetting.png")
    add_settings(forgetting, ForgettingSettings)
    refuse_renamed(forgetting, "--threshold", "--max-forgetting-drop-pct")
    forgetting.add_argument("--quiet", action="store_true", help="no progress bar")
    forgetting.set_defaults(run=_run_forgetting)

    cross = commands.add_parser(
        "cross-task", help="bake each task's few-shot prompt and score every bake on every task: the N×N matrix",
        description="Bakes each task's k-shot prompt (`bake --task`), or takes the bakes named with --bake; then, "
                    "through lm_eval: the base model 0-shot and k-shot, each bake 0-shot on every task and k-shot on "
                    "its own. Writes cross_task.json (per-doc scores, paired CIs, verdicts) and cross_task.png. "
                    "Exit 0 when every cell passes, 1 when one fails, 3 when none fails but one is inconclusive.")
    cross.add_argument("--tasks", nargs="+", required=True, metavar="TASK",
                       help="the lm_eval tasks, space- or comma-separated (e.g. the baking_fewshot group's members)")
    cross.add_argument("--output", "-o", type=output_path, required=True,
                       help="folder for bakes/, cross_task.json and cross_task.png")
    cross.add_argument("--bake", action="append", default=[], metavar="TASK=DIR",
                       help="use this existing bake of TASK (made with `bake --task TASK`) instead of baking it")
    cross.add_argument("--trust-remote-code", action="store_true",
                       help="let a model from the hub run its own Python code (off: only transformers' own code runs)")
    cross.add_argument("--quiet", action="store_true", help="no progress bars")
    add_settings(cross, CrossTaskSettings, title="evaluation and verdicts")
    refuse_renamed(cross, "--threshold", "--max-forgetting-drop-pct")
    add_settings(cross, TaskPromptSettings, title="the tasks' few-shot prompts")
    add_settings(cross, BakeConfig, exclude=("prompt", "questions"), title="bake settings (BakeConfig)")
    cross.set_defaults(run=_run_cross_task)


def _run_drift_data(args) -> None:
    settings = settings_from_args(ConversationSettings, args)
    quiet_libraries()
    from ..evals.drift import lm_eval_commands, prepare_drift_data

    data = prepare_drift_data(args.bake_dir, args.personas, settings, args.probes_at, persona_file=args.persona_file,
                              progress=not args.quiet)
    names = [p.name for p in data.personas]
    reused = [name for name in names if name not in data.generated]
    print(f"\nPersonas: {', '.join(names)}"
          + (f" (conversations reused: {', '.join(reused)})" if reused else ""))
    print(f"Conversations: {data.conversations}\nDrift docs:    {data.docs} ({data.n_docs} docs)")
    for warning in data.warnings:
        print(f"warning: {warning}")
    for persona in data.personas:
        if persona.system_prompt.strip() != data.baked_prompt.strip():
            print(f"note: persona '{persona.name}' chatted under its own system prompt, not the baked one; "
                  "the prompted-base command below uses the baked prompt")
    print("\nScore persona drift with lm-evaluation-harness:")
    for label, command in lm_eval_commands(data.bake_dir).items():
        print(f"  # {label}\n  {command}")


def _run_forgetting(args) -> int:
    settings = settings_from_args(ForgettingSettings, args)
    quiet_libraries()
    from ..constants import FORGETTING_HEATMAP, FORGETTING_RECORD
    from ..results.forgetting import format_summary
    from ..workflows.forgetting import forgetting_matrix

    report = forgetting_matrix(
        settings.model, args.adapters, settings.tasks, args.output,
        max_forgetting_drop_pct=settings.max_forgetting_drop_pct,
        limit=settings.limit, batch_size=settings.batch_size, device=settings.device,
        apply_chat_template=settings.apply_chat_template, progress=not args.quiet, reuse_base=settings.reuse_base,
    )
    print(format_summary(report))
    print(f"\nWrote {Path(args.output) / FORGETTING_RECORD} and {Path(args.output) / FORGETTING_HEATMAP}")
    return EXIT_CODES[report.verdict]


def _run_cross_task(args) -> int:
    from ..results.cross_task import format_summary

    settings = settings_from_args(CrossTaskSettings, args)
    task_settings = settings_from_args(TaskPromptSettings, args)
    tasks = [t.strip() for word in args.tasks for t in word.split(",") if t.strip()]
    config = settings_from_args(BakeConfig, args, prompt="lm_eval task prompts")  # each task's prompt replaces it
    quiet_libraries()
    from ..constants import CROSS_TASK_HEATMAP, CROSS_TASK_RECORD
    from ..workflows.cross_task import cross_task, parse_bakes

    report = cross_task(tasks, args.output, config, settings=settings, task_settings=task_settings,
                        bakes=parse_bakes(args.bake), progress=not args.quiet,
                        trust_remote_code=args.trust_remote_code)
    print(format_summary(report))
    print(f"\nWrote {Path(args.output) / CROSS_TASK_RECORD} and {Path(args.output) / CROSS_TASK_HEATMAP}")
    return EXIT_CODES[report.matrix["verdict"]]
