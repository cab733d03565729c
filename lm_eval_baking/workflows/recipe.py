"""A pipeline recipe: one YAML (or JSON) file a CI job keeps in version control.

    model: default                    # base model: 'default', a HF id or a directory
    output: runs/agent                # everything the pipeline writes goes under here
    cycles: 2                         # go through the stages this many times
    compose: {mode: joint}            # what every stage bakes towards: joint, replay, merge or sequential
    bake:                             # BakeConfig settings of every stage's bake (the prompt comes from the stage)
      max_new_tokens: 32
    stages:
      - name: tools
        prompt: "When a question needs arithmetic, answer with CALC(<expression>) first."
        pursuit: {max_rounds: 2, min_improvement: 0.01, evaluator: quality}
      - name: spanish
        prompt_file: prompts/spanish.txt   # or prompt: ..., or task: an lm-eval task's few-shot prompt
        pursuit: {max_rounds: 2}
    validation:
      device: cpu
      mckl: {min_quality: 0.5}        # baking_mckl for every stage's prompt, against the original base + that prompt
      drift: {stage: spanish, persona: spanish, max_drift: 0.3, conversations: 5}
      forgetting: {tasks: [baking_forgetting], max_forgetting_drop_pct: 5}

Paths in a recipe are read like paths on the command line: relative to the folder
the pipeline runs in. Every key is checked before any model work; a bad recipe is
one line naming the key, the problem and the fix (`RecipeError`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..compose.config import ComposeSettings, PursuitSettings
from ..constants import DEFAULT_MODEL, FORGETTING_GROUP
from ..core.verdicts import MAX_FORGETTING_DROP_PCT, check_forgetting_drop
from ..errors import BakingError
from ..evals.config import ConversationSettings
from ..training.config import BakeConfig
from ..utils.jsonl import read_text
from ..utils.text import listed, quoted


class RecipeError(BakingError):
    """A recipe that cannot be run: the message names the key, the problem and the fix."""


@dataclass
class Stage:
    name: str
    prompt: str
    source: str
    """Where the prompt came from: 'prompt', the prompt file's path, or 'task NAME (K-shot)'."""
    pursuit: PursuitSettings | None = None


@dataclass
class DriftCheck:
    stage: str
    persona: str
    max_drift: float | None = None
    min_adherence: float | None = None
    conversations: ConversationSettings = field(default_factory=ConversationSettings)
    probes_at: tuple[int, ...] = (1, 30)
    sampled_answers: int = 1


@dataclass
class ForgettingCheck:
    tasks: list[str]
    max_forgetting_drop_pct: float = MAX_FORGETTING_DROP_PCT
    max_docs: int | None = 200


@dataclass
class Validation:
    device: str = "cpu"
    batch_size: int = 8
    min_quality: float | None = None
    max_kl: float | None = None
    min_pursued_difference: float | None = 0.0
    """A pursued stage's evaluator score of the adapter minus the prompted base's (paired), at least this."""
    drift: DriftCheck | None = None
    forgetting: ForgettingCheck | None = None


@dataclass
class Recipe:
    model: str
    output: Path
    stages: list[Stage]
    cycles: int
    bake: dict
    """BakeConfig settings every stage shares (its prompt comes from the stage)."""
    validation: Validation
    source: Path | None = None
    compose: ComposeSettings = field(default_factory=ComposeSettings)

    def stage_config(self, stage: Stage) -> BakeConfig:
        return BakeConfig(prompt=stage.prompt, model=self.model, **self.bake)

    def joint_prompt(self) -> str:
        """Every stage's prompt joined as `compose` says: the target of the whole composition."""
        return self.compose.joined([stage.prompt for stage in self.stages])

    def schedule(self) -> list[tuple[int, Stage]]:
        """(cycle, stage) in the order they are baked."""
        return [(cycle, stage) for cycle in range(1, self.cycles + 1) for stage in self.stages]


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe file (YAML, or JSON)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} not found; pass the path of a YAML recipe (see `lm-eval-baking pipeline "
                          "--help`)")
    text = read_text(path, "recipe")
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except (ValueError, RecursionError) as e:  # json.JSONDecodeError is a ValueError
        raise RecipeError(f"recipe {path} is not valid JSON ({e}); fix the file") from None
    except Exception as e:  # noqa: BLE001 - yaml raises its own YAMLError family
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RecipeError(f"recipe {path} is not valid YAML ({quoted(first, 120)}); fix the file") from None
    return parse_recipe(data, source=path)


def parse_recipe(data, *, base_dir: Path = Path("."), source: Path | None = None) -> Recipe:
    """A Recipe from already-parsed YAML/JSON; relative paths are taken from `base_dir` (default: here)."""
    top = _mapping(data, None, {"model", "output", "stages", "cycles", "compose", "bake", "validation"})
    model = _text(top.get("model", DEFAULT_MODEL), "model")
    if "output" not in top:
        raise RecipeError("recipe key 'output' is missing; name the folder the pipeline writes to, e.g. "
                          "output: runs/agent")
    output = _resolve(_text(top["output"], "output"), base_dir)
    bake = _mapping(top.get("bake") or {}, "bake", {f.name for f in fields(BakeConfig)} - {"prompt", "model"})
    cycles = _whole(top.get("cycles", 1), "cycles", minimum=1)
    raw_stages = top.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise RecipeError("recipe key 'stages' must be a non-empty list of stages, e.g. "
                          "stages: [{name: persona, prompt: 'Always respond in Spanish.'}]")
    stages = [_stage(raw, f"stages[{i}]", base_dir) for i, raw in enumerate(raw_stages)]
    names = [s.name for s in stages]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise RecipeError(f"recipe key 'stages': the name {quoted(duplicated[0])} is used twice; give every stage "
                          "its own name")
    compose = _mapping(top.get("compose") or {}, "compose", {f.name for f in fields(ComposeSettings)})
    try:
        compose = ComposeSettings(**compose)
    except (BakingError, TypeError) as e:
        raise RecipeError(f"recipe key 'compose': {e}") from None
    recipe = Recipe(model=model, output=output, stages=stages, cycles=cycles, bake=bake,
                    validation=_validation(top.get("validation") or {}, names), source=source, compose=compose)
    for stage in stages:  # every stage's bake settings, checked now rather than after the first bake
        try:
            recipe.stage_config(stage)
        except BakingError as e:
            raise RecipeError(f"recipe key 'bake' (stage {quoted(stage.name)}): {e}") from None
    return recipe


def _stage(raw, where: str, base_dir: Path) -> Stage:
    stage = _mapping(raw, where, {"name", "prompt", "prompt_file", "task", "num_fewshot", "pursuit"})
    name = _text(stage.get("name"), f"{where}.name")
    given = [key for key in ("prompt", "prompt_file", "task") if key in stage]
    if len(given) != 1:
        raise RecipeError(f"recipe key '{where}' needs exactly one of prompt, prompt_file or task "
                          f"(it has {listed(given) or 'none'}); e.g. prompt: 'Always respond in Spanish.'")
    if "prompt" in stage:
        prompt, source = _text(stage["prompt"], f"{where}.prompt"), "prompt"
    elif "prompt_file" in stage:
        path = _resolve(_text(stage["prompt_file"], f"{where}.prompt_file"), base_dir)
        prompt, source = read_text(path, f"{where}.prompt_file"), str(path)
    else:
        raise RecipeError(f"recipe key '{where}.task': stages from lm-eval tasks are baked with "
                          "`lm-eval-baking bake --task`; in a recipe, give the prompt or prompt_file for now")
    if not prompt.strip():
        raise RecipeError(f"recipe key '{where}' has an empty prompt; write the prompt to bake")
    pursuit = None
    if stage.get("pursuit") is not None:
        settings = _mapping(stage["pursuit"], f"{where}.pursuit", {f.name for f in fields(PursuitSettings)})
        try:
            pursuit = PursuitSettings(**settings)
        except (BakingError, TypeError) as e:
            raise RecipeError(f"recipe key '{where}.pursuit': {e}") from None
    return Stage(name=name, prompt=prompt, source=source, pursuit=pursuit)


def _validation(raw, stage_names: list[str]) -> Validation:
    top = _mapping(raw, "validation", {"device", "batch_size", "mckl", "pursued", "drift", "forgetting"})
    validation = Validation(device=_text(top.get("device", "cpu"), "validation.device"),
                            batch_size=_whole(top.get("batch_size", 8), "validation.batch_size", minimum=1))
    if top.get("mckl") is not None:
        mckl = _mapping(top["mckl"], "validation.mckl", {"min_quality", "max_kl"})
        validation.min_quality = _number(mckl.get("min_quality"), "validation.mckl.min_quality", high=1.0)
        validation.max_kl = _number(mckl.get("max_kl"), "validation.mckl.max_kl", low=0.0)
    if "pursued" in top:
        pursued = _mapping(top["pursued"] or {}, "validation.pursued", {"min_difference"})
        validation.min_pursued_difference = _number(pursued.get("min_difference"), "validation.pursued.min_difference",
                                                    low=-1.0, high=1.0)
    if top.get("drift") is not None:
        drift = _mapping(top["drift"], "validation.drift",
                         {"stage", "persona", "max_drift", "min_adherence", "conversations", "turns",
                          "max_new_tokens", "temperature", "seed", "user_context_turns", "probes_at", "sampled_answers"})
        stage = _text(drift.get("stage"), "validation.drift.stage")
        if stage not in stage_names:
            raise RecipeError(f"recipe key 'validation.drift.stage': no stage {quoted(stage)}; use one of "
                              f"{listed(stage_names)}")
        try:
            conversations = ConversationSettings(**{k: drift[k] for k in
                                                    ("conversations", "turns", "max_new_tokens", "temperature", "seed",
                                                     "user_context_turns")
                                                    if k in drift})
        except (BakingError, TypeError) as e:
            raise RecipeError(f"recipe key 'validation.drift': {e}") from None
        probes = drift.get("probes_at", [1, conversations.turns])
        if not isinstance(probes, list) or not probes or not all(
                isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= conversations.turns for t in probes):
            raise RecipeError(f"recipe key 'validation.drift.probes_at' must list turns between 0 and "
                              f"{conversations.turns}, e.g. [1, {conversations.turns}]")
        validation.drift = DriftCheck(
            stage=stage, persona=_text(drift.get("persona"), "validation.drift.persona"),
            max_drift=_number(drift.get("max_drift"), "validation.drift.max_drift", low=-1.0),
            min_adherence=_number(drift.get("min_adherence"), "validation.drift.min_adherence", high=1.0),
            conversations=conversations, probes_at=tuple(sorted(set(probes))),
            sampled_answers=_whole(drift.get("sampled_answers", 1), "validation.drift.sampled_answers", minimum=0))
    if top.get("forgetting") is not None:
        if isinstance(top["forgetting"], dict) and "max_drop_pct" in top["forgetting"]:
            raise RecipeError("recipe key 'validation.forgetting.max_drop_pct' was renamed max_forgetting_drop_pct; "
                              "rename it in the recipe")
        forgetting = _mapping(top["forgetting"], "validation.forgetting", {"tasks", "max_forgetting_drop_pct",
                                                                           "max_docs"})
        tasks = forgetting.get("tasks", [FORGETTING_GROUP])
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) and t for t in tasks):
            raise RecipeError("recipe key 'validation.forgetting.tasks' must list lm_eval tasks or groups, e.g. "
                              "[baking_forgetting]")
        drop = _number(forgetting.get("max_forgetting_drop_pct", ForgettingCheck.max_forgetting_drop_pct),
                       "validation.forgetting.max_forgetting_drop_pct")
        try:
            check_forgetting_drop(drop, "recipe key 'validation.forgetting.max_forgetting_drop_pct'")
        except BakingError as e:
            raise RecipeError(str(e)) from None
        max_docs = forgetting.get("max_docs", ForgettingCheck.max_docs)
        validation.forgetting = ForgettingCheck(
            tasks=tasks, max_forgetting_drop_pct=drop,
            max_docs=None if max_docs is None else _whole(max_docs, "validation.forgetting.max_docs", minimum=1))
    return validation


# ---------------------------------------------------------------------------- typed reads with one-line errors


def _mapping(value, where: str | None, allowed: set[str]) -> dict:
    """`value` as a mapping with only `allowed` keys; `where` is its recipe key (None: the whole recipe)."""
    what = f"recipe key '{where}'" if where else "the recipe"
    if not isinstance(value, dict):
        raise RecipeError(f"{what} must be a mapping of settings, not {quoted(value, 40)}")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise RecipeError(f"{what} has unknown setting {quoted(unknown[0])}; use one of {listed(sorted(allowed))}")
    return value


def _text(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RecipeError(f"recipe key '{where}' needs a non-empty text value, not {quoted(value, 40)}")
    return value


def _whole(value, where: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RecipeError(f"recipe key '{where}' must be a whole number of at least {minimum}, not {quoted(value, 40)}")
    return value


def _number(value, where: str, *, low: float | None = None, high: float | None = None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise RecipeError(f"recipe key '{where}' must be a number, not {quoted(value, 40)}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low:g}" if high is None else f"at most {high:g}" if low is None else \
            f"between {low:g} and {high:g}"
        raise RecipeError(f"recipe key '{where}' can never pass at {value:g}: it must be {bounds}")
    return float(value)


def _resolve(path: str, base_dir: Path) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else base_dir / candidate
