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
        multi_turn: {enabled: true, refresh: true, max_depth: 8}   # this stage bakes on conversations
    validation:
      device: cpu
      mckl: {min_quality: 0.5}        # baking_mckl for every stage's prompt, against the original base + that prompt
      drift: {stage: spanish, persona: spanish, max_drift: 0.3, conversations: 5}
      forgetting: {tasks: [baking_forgetting], max_forgetting_drop_pct: 5}

Paths in a recipe are read like paths on the command line: relative to the folder
the pipeline runs in. Every key is checked before any model work; a bad recipe is
one line naming the key, the problem and the fix (`RecipeError`).

A recipe is read into the same config classes the command line uses (`PursuitSettings`,
`ComposeSettings`, `ConversationSettings`, and the check classes below) by
`utils.settings.from_mapping`: every key is a dataclass field, every default is that
field's, and each class's own `__post_init__` checks its values. Libraries tried instead
(issue 26), on recipes/demo.yaml with the damaged keys of tests/workflows/test_recipe_settings.py:
`transformers.HfArgumentParser.parse_dict` neither checks types nor reads nested sections;
dacite 1.9.2 (`from_dict`, `Config(strict=True, check_types=True, cast=[Path, tuple])`) has no
flattened section, drops list indices from its paths ('stages.pursuit.max_rounds'), says no
path for an unknown key (`UnexpectedDataError`) nor for a class's own check (the BakingError
passes through naming '--turns'), takes `true` as a whole number and '' as the path '.';
pydantic 2 (only here through typer) finds every path with its index, but takes `true` and
'16' as whole numbers unless strict (which then refuses every mapping as not an instance), and
neither names a class's own check's key nor has a flattened section. Each gap can be patched
with hooks around the library, which adds up to the code it would replace, plus a dependency.
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
from ..training.config import BakeConfig, MultiTurnConfig
from ..utils.jsonl import read_text
from ..utils.settings import from_mapping, in_range, refuse_unknown_keys, setting
from ..utils.text import listed, quoted

# Recipe keys an earlier version read, and their names now: refused with one line naming the new one.
RENAMED_KEYS = {"max_drop_pct": "max_forgetting_drop_pct"}


class RecipeError(BakingError):
    """A recipe that cannot be run: the message names the key, the problem and the fix."""


def _bounded(value, key: str, *, low: float | None = None, high: float | None = None) -> None:
    """Refuse a bound no result could ever meet (`key`: its name in the recipe)."""
    if value is None:
        return
    if not in_range(value):
        raise BakingError(f"{key} must be a finite number, not {quoted(value, 40)}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low:g}" if high is None else f"at most {high:g}" if low is None else \
            f"between {low:g} and {high:g}"
        raise BakingError(f"{key} can never pass at {value:g}: it must be {bounds}")


@dataclass
class StageSpec:
    """One entry of `stages:` as written: a name and one of prompt, prompt_file or task."""

    name: str = setting(help="the stage's name, e.g. name: persona")
    prompt: str | None = setting(None, help="the prompt to bake")
    prompt_file: Path | None = setting(None, help="a UTF-8 file holding the prompt to bake")
    task: str | None = setting(None, help="an lm-eval task whose few-shot prompt is baked")
    num_fewshot: int | None = setting(None, help="with task: the few-shot examples in the baked context")
    pursuit: PursuitSettings | None = setting(None, help="prompt pursuit of this stage")
    multi_turn: MultiTurnConfig | None = setting(None, help=(
        "multi-turn baking of this stage (MultiTurnConfig keys, e.g. {enabled: true, refresh: true}); replaces "
        "bake.multi_turn for this stage"))

    def __post_init__(self):
        if not self.name.strip():
            raise BakingError("name needs non-empty text, e.g. name: persona")
        given = [key for key in ("prompt", "prompt_file", "task") if getattr(self, key) is not None]
        if len(given) != 1:
            raise BakingError(f"needs exactly one of prompt, prompt_file or task (it has {listed(given) or 'none'}); "
                              "e.g. prompt: 'Always respond in Spanish.'")
        if self.task is not None:
            raise BakingError("task: stages from lm-eval tasks are baked with `lm-eval-baking bake --task`; in a "
                              "recipe, give the prompt or prompt_file for now")


@dataclass
class Stage:
    name: str
    prompt: str
    source: str
    """Where the prompt came from: 'prompt', the prompt file's path, or 'task NAME (K-shot)'."""
    pursuit: PursuitSettings | None = None
    multi_turn: MultiTurnConfig | None = None
    """The stage's own multi-turn settings (None: the recipe's bake.multi_turn)."""


@dataclass
class MckLCheck:
    """`validation.mckl`: baking_mckl for every stage's prompt, against the original base + that prompt."""

    min_quality: float | None = setting(None, help="lowest quality (1 = the prompt's effect fully baked in)")
    max_kl: float | None = setting(None, help="highest kl_per_token")

    def __post_init__(self):
        _bounded(self.min_quality, "min_quality", high=1.0)
        _bounded(self.max_kl, "max_kl", low=0.0)


@dataclass
class PursuedCheck:
    """`validation.pursued`: every pursued stage's evaluator score of the adapter minus the prompted base's."""

    min_difference: float | None = setting(0.0, help="least paired difference (null: not checked)")

    def __post_init__(self):
        _bounded(self.min_difference, "min_difference", low=-1.0, high=1.0)


@dataclass
class DriftCheck:
    """`validation.drift`: persona drift of one stage's persona; the conversation settings sit beside these."""

    stage: str = setting(help="the stage whose prompt the persona chats under, e.g. stage: spanish")
    persona: str = setting(help="a built-in persona, e.g. persona: spanish")
    max_drift: float | None = setting(None, help="highest drift (adherence early minus late)")
    min_adherence: float | None = setting(None, help="lowest adherence")
    conversations: ConversationSettings = setting(default_factory=ConversationSettings, flatten=True,
                                                  help="the conversations' settings, as `drift-data` takes them")
    probes_at: tuple[int, ...] | None = setting(None, help="turns after which the probes are asked (default: "
                                                           "the first and the last)")
    sampled_answers: int = setting(1, help="sampled answers per probe besides the greedy one")

    def __post_init__(self):
        for key in ("stage", "persona"):
            if not getattr(self, key).strip():
                raise BakingError(f"{key} needs non-empty text")
        _bounded(self.max_drift, "max_drift", low=-1.0)
        _bounded(self.min_adherence, "min_adherence", high=1.0)
        turns = self.conversations.turns
        probes = (1, turns) if self.probes_at is None else self.probes_at
        if not probes or not all(0 <= t <= turns for t in probes):
            raise BakingError(f"probes_at must list turns between 0 and {turns}, e.g. [1, {turns}]")
        self.probes_at = tuple(sorted(set(probes)))
        if self.sampled_answers < 0:
            raise BakingError(f"sampled_answers must be a whole number of at least 0, not {self.sampled_answers}")


@dataclass
class ForgettingCheck:
    """`validation.forgetting`: the adapter against the base model on lm_eval tasks, paired per doc."""

    tasks: list[str] = setting(default_factory=lambda: [FORGETTING_GROUP], help="lm_eval tasks or groups")
    max_forgetting_drop_pct: float = setting(MAX_FORGETTING_DROP_PCT, help="largest allowed relative drop, in %")
    max_docs: int | None = setting(200, help="docs per task (null: all)")

    def __post_init__(self):
        if not self.tasks or not all(t.strip() for t in self.tasks):
            raise BakingError(f"tasks must list lm_eval tasks or groups, e.g. [{FORGETTING_GROUP}]")
        check_forgetting_drop(self.max_forgetting_drop_pct, "max_forgetting_drop_pct")
        if self.max_docs is not None and self.max_docs < 1:
            raise BakingError(f"max_docs must be a whole number of at least 1, not {self.max_docs}")


@dataclass
class Validation:
    device: str = setting("cpu", help="torch device of the lm_eval runs")
    batch_size: int = setting(8, help="lm_eval batch size")
    mckl: MckLCheck | None = setting(default_factory=MckLCheck, help="the baking_mckl check")
    pursued: PursuedCheck | None = setting(default_factory=PursuedCheck, help="the pursued stages' check")
    drift: DriftCheck | None = setting(None, help="the persona-drift check")
    forgetting: ForgettingCheck | None = setting(None, help="the forgetting check")
    reuse_base: bool = setting(True, help=(
        "reuse the base model's lm_eval runs (forgetting, the prompted base's drift) stored by an earlier run with "
        "the same model, command, task data and versions (the base-model store), and store new ones; false: run "
        "them again"))

    def __post_init__(self):
        if not self.device.strip():
            raise BakingError("device needs non-empty text, e.g. device: cpu")
        if self.batch_size < 1:
            raise BakingError(f"batch_size must be a whole number of at least 1, not {self.batch_size}")
        self.mckl = self.mckl or MckLCheck()  # `mckl: null`: nothing checked
        self.pursued = self.pursued or PursuedCheck(min_difference=None)  # `pursued: null`: not checked


@dataclass
class RecipeSpec:
    """A recipe file as written: what `from_mapping` reads before paths and prompt files are resolved."""

    output: Path = setting(help="the folder the pipeline writes to, e.g. output: runs/agent")
    stages: list[StageSpec] = setting(help="the stages, e.g. stages: [{name: persona, prompt: '...'}]")
    model: str = setting(DEFAULT_MODEL, help="base model: 'default', a HF id or a directory")
    cycles: int = setting(1, help="go through the stages this many times")
    compose: ComposeSettings | None = setting(default_factory=ComposeSettings, help="what every stage bakes towards")
    bake: dict | None = setting(default_factory=dict, help="BakeConfig settings of every stage's bake")
    validation: Validation | None = setting(default_factory=Validation, help="the checks after the bakes")

    def __post_init__(self):
        # A section left empty (`bake:` with nothing under it) is the section's defaults.
        self.compose, self.bake = self.compose or ComposeSettings(), self.bake or {}
        self.validation = self.validation or Validation()
        if not self.model.strip():
            raise RecipeError("recipe key 'model' needs non-empty text, e.g. model: default")
        if self.cycles < 1:
            raise RecipeError(f"recipe key 'cycles' must be a whole number of at least 1, not {self.cycles}")
        if not self.stages:
            raise RecipeError("recipe key 'stages' must be a non-empty list of stages, e.g. "
                              "stages: [{name: persona, prompt: 'Always respond in Spanish.'}]")
        refuse_unknown_keys(self.bake, {f.name for f in fields(BakeConfig)} - {"prompt", "model"},
                            "recipe key 'bake'")
        if self.bake.get("multi_turn") is not None:  # read here, so a bad key is named where it is
            self.bake["multi_turn"] = from_mapping(MultiTurnConfig, self.bake["multi_turn"], "bake.multi_turn")


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
        own = {"multi_turn": stage.multi_turn} if stage.multi_turn is not None else {}
        return BakeConfig(prompt=stage.prompt, model=self.model, **{**self.bake, **own})

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
    try:
        return parse_recipe(data, source=path)
    except RecipeError as e:
        raise RecipeError(f"{path}: {e}") from None


def parse_recipe(data, *, base_dir: Path = Path("."), source: Path | None = None) -> Recipe:
    """A Recipe from already-parsed YAML/JSON; relative paths are taken from `base_dir` (default: here)."""
    _refuse_renamed(data, "")
    try:
        spec = from_mapping(RecipeSpec, data, what="recipe")
    except RecipeError:
        raise
    except BakingError as e:
        raise RecipeError(str(e)) from None
    stages = [_stage(s, f"stages[{i}]", base_dir) for i, s in enumerate(spec.stages)]
    names = [s.name for s in stages]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise RecipeError(f"recipe key 'stages': the name {quoted(duplicated[0])} is used twice; give every stage "
                          "its own name")
    drift = spec.validation.drift
    if drift is not None and drift.stage not in names:
        raise RecipeError(f"recipe key 'validation.drift.stage': no stage {quoted(drift.stage)}; use one of "
                          f"{listed(names)}")
    output = spec.output if spec.output.is_absolute() else base_dir / spec.output
    recipe = Recipe(model=spec.model, output=output, stages=stages, cycles=spec.cycles, bake=spec.bake,
                    validation=spec.validation, source=source, compose=spec.compose)
    for stage in stages:  # every stage's bake settings, checked now rather than after the first bake
        try:
            recipe.stage_config(stage)
        except BakingError as e:
            raise RecipeError(f"recipe key 'bake' (stage {quoted(stage.name)}): {e}") from None
    return recipe


def _stage(spec: StageSpec, where: str, base_dir: Path) -> Stage:
    if spec.prompt is not None:
        prompt, source = spec.prompt, "prompt"
    else:
        path = spec.prompt_file if spec.prompt_file.is_absolute() else base_dir / spec.prompt_file
        prompt, source = read_text(path, f"{where}.prompt_file"), str(path)
    if not prompt.strip():
        raise RecipeError(f"recipe key '{where}' has an empty prompt; write the prompt to bake")
    return Stage(name=spec.name, prompt=prompt, source=source, pursuit=spec.pursuit, multi_turn=spec.multi_turn)


def _refuse_renamed(data, where: str) -> None:
    """A key an earlier version read (RENAMED_KEYS), anywhere in the recipe: one line naming its new name."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        here = f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else str(key)
        if key in RENAMED_KEYS:
            raise RecipeError(f"recipe key '{here}' was renamed {RENAMED_KEYS[key]}; rename it in the recipe")
        _refuse_renamed(value, here)
