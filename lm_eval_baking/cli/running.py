"""`pipeline`: bake a recipe's prompts in cycles, pursue each, validate through lm_eval, one all-checks verdict.
`make demo` is this command on `recipes/demo.yaml`."""

from __future__ import annotations

from ..workflows.settings import PipelineSettings
from .options import add_settings, settings_from_args


def register(commands) -> None:
    pipeline = commands.add_parser(
        "pipeline", help="run a recipe: bake its prompts in cycles, pursue each, validate, report, one verdict",
        description="Exit 0 when every check passes, 1 when one fails, 3 when none fails but one is inconclusive, "
                    "2 on a bad recipe. A rerun reuses every finished step, so a killed pipeline is run again.")
    add_settings(pipeline, PipelineSettings)
    pipeline.set_defaults(run=_run_pipeline)


def _run_pipeline(args) -> int:
    from ..workflows.recipe import load_recipe

    settings = settings_from_args(PipelineSettings, args)
    recipe = load_recipe(settings.recipe)  # a bad recipe is refused before torch is even imported
    from ..workflows.pipeline import format_pipeline, run_pipeline
    from .options import quiet_libraries

    quiet_libraries()
    try:
        result = run_pipeline(recipe, overwrite=settings.overwrite, progress=not settings.quiet)
    except KeyboardInterrupt as e:
        if str(e):  # a bake's own line: where its work is kept
            raise
        # Stopped between bakes (an lm_eval run, a check): every finished step is kept, an unfinished one never
        # lands at its path, and the same command continues.
        raise KeyboardInterrupt(f"every finished step is kept in {recipe.output}; rerun the same command to "
                                "continue from there") from None
    print("\n" + format_pipeline(result))
    return result.exit_code
