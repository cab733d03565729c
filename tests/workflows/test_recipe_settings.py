"""Recipes are read into the config classes by utils.settings.from_mapping: the shipped recipes give the settings
they gave before, and every bad key is one line naming it (with the nearest valid key when it is unknown)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from lm_eval_baking.compose.config import ComposeSettings, PursuitSettings
from lm_eval_baking.evals.config import ConversationSettings
from lm_eval_baking.workflows.recipe import RecipeError, load_recipe, parse_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
PIRATE = "You are a pirate. Start every answer with 'Ahoy!'"


@pytest.mark.parametrize("name, cycles", [("demo", 1), ("full", 2)])
def test_the_shipped_recipes_give_the_settings_they_gave_before(name, cycles):
    # The values the hand-written parser gave (recorded before recipes were read through the config classes).
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    assert (recipe.model, recipe.output, recipe.cycles, recipe.bake) == ("default", Path(f"reports/{name}"), cycles,
                                                                        {"max_new_tokens": 24})
    assert recipe.compose == ComposeSettings(mode="joint")
    assert [(s.name, s.prompt, s.source, s.pursuit) for s in recipe.stages] == [
        ("pirate", PIRATE, "prompt", PursuitSettings(2, 0.01, "adherence:pirate")),
        ("spanish", "Always respond in Spanish.", "prompt", PursuitSettings(2, 0.01, "adherence:spanish"))]
    v = recipe.validation
    assert (v.device, v.batch_size, v.mckl.min_quality, v.mckl.max_kl, v.pursued.min_difference) == (
        "cpu", 16, 0.5, None, 0.0)
    d = v.drift
    assert (d.stage, d.persona, d.max_drift, d.min_adherence, d.probes_at, d.sampled_answers) == (
        "spanish", "spanish", 0.5, None, (1, 30), 1)
    assert d.conversations == ConversationSettings(turns=30, max_new_tokens=24, conversations=5)
    f = v.forgetting
    assert (f.tasks, f.max_forgetting_drop_pct, f.max_docs) == (["baking_forgetting"], 3.4, 50)


def test_left_out_keys_take_the_config_classes_defaults():
    recipe = parse_recipe({"output": "runs/x", "stages": [{"name": "a", "prompt": "Be brief."}],
                           "validation": {"drift": {"stage": "a", "persona": "p", "turns": 10}, "forgetting": {}}})
    assert recipe.cycles == 1 and recipe.compose == ComposeSettings() and recipe.stages[0].pursuit is None
    assert recipe.validation.drift.conversations == ConversationSettings(turns=10)
    assert recipe.validation.drift.probes_at == (1, 10)  # the first turn and the last
    assert recipe.validation.forgetting.max_forgetting_drop_pct == 3.4
    assert recipe.validation.pursued.min_difference == 0.0


@pytest.mark.parametrize("damage, message", [
    (lambda r: r["stages"][1]["pursuit"].update(max_rounds="three"),
     "recipe key 'stages[1].pursuit.max_rounds' must be a whole number, not three"),
    (lambda r: r["stages"][1]["pursuit"].update(max_roundz=2),
     "recipe key 'stages[1].pursuit' has unknown setting max_roundz; did you mean max_rounds?"),
    (lambda r: r.update(cycle=2), "the recipe has unknown setting cycle; did you mean cycles?"),
    (lambda r: r["validation"]["drift"].update(tunrs=3), "'validation.drift' has unknown setting tunrs; did you mean turns?"),
    (lambda r: r["validation"]["drift"].update(turns=0), "recipe key 'validation.drift': turns must be at least 1"),
    (lambda r: r["validation"].update(batch_size=True), "recipe key 'validation.batch_size' must be a whole number, not true"),
    (lambda r: r["validation"]["forgetting"].update(tasks="x"), "'validation.forgetting.tasks' must be a list, not x"),
    (lambda r: r["stages"][0].pop("name"), "recipe key 'stages[0].name' is missing; add it"),
])
def test_a_bad_key_is_one_line_naming_it(damage, message):
    recipe = copy.deepcopy(yaml.safe_load((RECIPES / "demo.yaml").read_text()))
    damage(recipe)
    with pytest.raises(RecipeError) as error:
        parse_recipe(recipe)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_recipe_file_error_names_the_file(tmp_path):
    recipe = yaml.safe_load((RECIPES / "demo.yaml").read_text())
    recipe["validation"]["forgetting"]["max_drop_pct"] = 3.4
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(RecipeError, match=r"x\.yaml: recipe key 'validation\.forgetting\.max_drop_pct' was renamed "
                                          "max_forgetting_drop_pct"):
        load_recipe(tmp_path / "x.yaml")
