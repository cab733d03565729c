"""The pipeline: a recipe's prompts baked in cycles and pursued, validated through the real lm_eval, one verdict."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from lm_eval_baking.cli import main
from lm_eval_baking.workflows.recipe import RecipeError, load_recipe, parse_recipe

from conftest import FRENCH, PIRATE, tiny_recipe


# ---------------------------------------------------------------------------- recipes

@pytest.mark.parametrize("damage, message", [
    (lambda r: r.pop("output"), "'output' is missing"),
    (lambda r: r.update(stages=[]), "'stages' must be a non-empty list"),
    (lambda r: r.update(cycles=0), "'cycles' must be a whole number of at least 1"),
    (lambda r: r.update(colour="blue"), "unknown setting colour"),
    (lambda r: r["stages"][0].update(prompt_file="x.txt"), "exactly one of prompt, prompt_file or task"),
    (lambda r: r["stages"][1].update(name="pirate"), "the name pirate is used twice"),
    (lambda r: r["stages"][0].update(pursuit={"max_rounds": 0}), "'stages[0].pursuit': max_rounds must be an integer"),
    (lambda r: r["bake"].update(epochs=0), "recipe key 'bake' (stage pirate): --epochs must be at least 1"),
    (lambda r: r["bake"].update(learning_rat=1), "'bake' has unknown setting learning_rat"),
    (lambda r: r["validation"]["mckl"].update(min_quality=2), "can never pass at 2: it must be at most 1"),
    (lambda r: r["validation"]["drift"].update(stage="nope"), "no stage nope; use one of pirate, french"),
    (lambda r: r["validation"]["drift"].update(probes_at=[99]), "'validation.drift': probes_at must list turns"),
    (lambda r: r["validation"]["forgetting"].update(max_forgetting_drop_pct=0),
     "'validation.forgetting': max_forgetting_drop_pct must be a finite number above 0"),
    (lambda r: r["validation"]["forgetting"].update(max_drop_pct=3), "max_drop_pct' was renamed max_forgetting_drop_pct"),
])
def test_a_bad_recipe_is_one_line_naming_the_key(damage, message, tmp_path, tiny_model_dir, question_file):
    recipe = tiny_recipe(tmp_path, tiny_model_dir, question_file)
    damage(recipe)
    with pytest.raises(RecipeError, match=re.escape(message)) as error:
        parse_recipe(recipe)
    assert "\n" not in str(error.value)


def test_recipe_files_are_yaml_or_json_and_bad_ones_are_refused_before_model_work(tmp_path, tiny_model_dir,
                                                                                   question_file, capsys):
    recipe = tiny_recipe(tmp_path, tiny_model_dir, question_file)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    assert load_recipe(tmp_path / "r.yaml").stages[1].prompt == load_recipe(tmp_path / "r.json").stages[1].prompt == FRENCH
    (tmp_path / "broken.yaml").write_text("stages: [\n")
    assert main(["pipeline", str(tmp_path / "broken.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not valid YAML" in err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- a whole run on the tiny model

def test_the_pipeline_bakes_every_stage_of_every_cycle_on_top_of_the_earlier_ones(tiny_pipeline):
    recipe, result = tiny_pipeline
    assert [(s.index, s.cycle, s.name) for s in result.stages] == [(1, 1, "pirate"), (2, 1, "french"),
                                                                    (3, 2, "pirate"), (4, 2, "french")]
    for stage in result.stages:
        assert [r["round"] for r in stage.rounds][0] == 0 and 1 <= stage.best_round <= 2
        assert set(stage.quality_after) == {"pirate", "french"}
    record = json.loads((recipe.output / "pipeline.json").read_text())
    assert record["status"] == "done" and record["verdict"] == result.verdict
    # One standard PEFT adapter: every kept round of every stage, concatenated along the rank.
    exported = json.loads((result.adapter / "baking.json").read_text())
    rounds = exported["pursuit_export"]["rounds"]
    assert len(rounds) == sum(s.best_round for s in result.stages)
    assert [r["prompt"] for r in rounds][0] == PIRATE
    kept = result.quality_kept()
    assert set(kept) == {"pirate", "french"} and kept["french"]["after_pipeline"] == result.stages[-1].quality_after["french"]
    # Joint composition (the default): stages after the first are read by the original base with both prompts.
    assert [s.target for s in result.stages] == ["start", "base", "base", "base"]
    assert all(s.joint_quality is not None for s in result.stages)
    assert set(result.behaviour) == {"pirate:pirate", "pirate:pirate_speech", "french:french"}
    assert record["behaviour"] == result.behaviour and record["compose"]["mode"] == "joint"


def test_every_check_is_three_way_with_its_ci_and_sets_the_exit_code(tiny_pipeline):
    _, result = tiny_pipeline
    by_metric = {(c.metric, c.variant): c for c in result.checks}
    assert {("quality", "all prompts joined"), ("kl", "all prompts joined"),
            ("drift", "french persona"), ("forgetting", next(c.variant for c in result.checks
                                                             if c.metric == "forgetting"))} <= set(by_metric)
    for check in result.checks:
        assert check.verdict in ("PASS", "FAIL", "INCONCLUSIVE")
    assert result.exit_code == {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}[result.verdict]


def test_a_second_run_reuses_every_bake_and_evaluation(tiny_pipeline):
    from lm_eval_baking.workflows.pipeline import run_pipeline

    recipe, first = tiny_pipeline
    stamps = {p: p.stat().st_mtime_ns for p in recipe.output.rglob("results_*.json")}
    adapters = {p: p.stat().st_mtime_ns for p in recipe.output.rglob("adapter_model.safetensors")
                if "stages" in p.parts}
    again = run_pipeline(recipe, progress=False)
    assert {p: p.stat().st_mtime_ns for p in recipe.output.rglob("results_*.json")} == stamps
    assert {p: p.stat().st_mtime_ns for p in adapters} == adapters
    assert again.verdict == first.verdict and [c.value for c in again.checks] == [c.value for c in first.checks]


def test_a_pipeline_killed_in_the_middle_of_a_stage_resumes_it(tiny_model_dir, question_file, tmp_path, monkeypatch):
    from lm_eval_baking.training.baker import PromptBaker
    from lm_eval_baking.workflows.pipeline import run_pipeline

    data = tiny_recipe(tmp_path, tiny_model_dir, question_file)
    data.update(cycles=1, validation={})
    recipe = parse_recipe(data)
    train_epoch, epochs = PromptBaker.train_epoch, []

    def killed_in_the_second_stage(self, *args, **kwargs):
        epochs.append(self.config.prompt)
        if FRENCH in self.config.prompt:  # joint mode: stage 2 bakes the joined prompt
            raise KeyboardInterrupt
        return train_epoch(self, *args, **kwargs)

    monkeypatch.setattr(PromptBaker, "train_epoch", killed_in_the_second_stage)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(recipe, progress=False)
    partial = next((recipe.output / "stages" / "02-french-c1").glob(".round-1.partial"))
    assert (partial / "data" / "train.jsonl").is_file(), "the stage's sampled answers are kept"
    monkeypatch.setattr(PromptBaker, "train_epoch", train_epoch)
    result = run_pipeline(recipe, progress=False)
    bake = json.loads((recipe.output / "stages" / "02-french-c1" / "round-1" / "baking.json").read_text())
    assert bake["resumes"] and [s.name for s in result.stages] == ["pirate", "french"]
    assert not partial.exists()


def test_the_pipeline_command_prints_the_tables_and_exits_with_the_verdict(tiny_pipeline, tmp_path, capsys):
    recipe, result = tiny_pipeline
    path = tmp_path / "recipe.json"  # the same recipe as a file: the command reuses the finished run
    path.write_text(json.dumps(tiny_recipe(recipe.output.parent, recipe.model, recipe.bake["questions"])))
    code = main(["pipeline", str(path), "--quiet"])
    out = capsys.readouterr().out
    assert code == result.exit_code
    assert "stage 4: french (cycle 2)" in out and "after own stage" in out and "inconclusive:" in out
    assert "| step | seconds |" in out


def test_ctrl_c_between_bakes_says_the_finished_steps_are_kept(tiny_model_dir, question_file, tmp_path, capsys,
                                                               monkeypatch):
    import lm_eval_baking.workflows.pipeline as pipeline

    def interrupted(*_, **__):
        raise KeyboardInterrupt  # as Ctrl-C during an lm_eval run gives it: no bake's own message
    monkeypatch.setattr(pipeline, "run_pipeline", interrupted)
    recipe, settings = tmp_path / "r.yaml", tiny_recipe(tmp_path, tiny_model_dir, question_file)
    recipe.write_text(yaml.safe_dump(settings))
    assert main(["pipeline", str(recipe), "--quiet"]) == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (f"lm-eval-baking: interrupted; every finished step is kept in {settings['output']}; rerun the same "
                    "command to continue from there")


def test_another_pipeline_reuses_the_base_models_lm_eval_runs_from_the_store(tiny_pipeline, tmp_path, monkeypatch):
    """The base model's runs (forgetting of the base, drift of the prompted base) of a second pipeline's
    validation come from the base-model store; only the adapter's runs call lm_eval, and the checks read the
    copied results as they read the first pipeline's own."""
    import shutil
    from dataclasses import replace

    import lm_eval_baking.workflows.lm_eval_runs as runs
    from lm_eval_baking.artifacts.records import LmEvalRunStamp
    from lm_eval_baking.core import models
    from lm_eval_baking.workflows.pipeline import _validate, all_checks

    recipe, first = tiny_pipeline
    second = replace(recipe, output=tmp_path / "second")
    references = {}
    for folder in sorted((recipe.output / "references").iterdir()):  # the same references, in the new run
        references[folder.name] = second.output / "references" / folder.name
        shutil.copytree(folder, references[folder.name])
    calls = []
    real = runs.run_child
    monkeypatch.setattr(runs, "run_child", lambda argv, **kw: calls.append(argv) or real(argv, **kw))

    _validate(second, models.resolve_model(recipe.model), first.adapter, references, progress=False)
    assert calls and all(any("peft=" in word for word in argv) for argv in calls), "the base model ran again"
    for name in ("forgetting/base", "drift/prompted-base"):
        stamp = LmEvalRunStamp.from_pretrained(second.output / "lm_eval" / name)
        assert stamp.reused_from and any((second.output / "lm_eval" / name).rglob("results_*.json"))
    drift = next((second.output / "lm_eval" / "drift" / "prompted-base").rglob("results_*.json")).read_text()
    assert str(references["french"]) in drift and str(recipe.output / "references") not in drift
    assert ([c.value for c in all_checks(second, first.adapter, first.pursued)]
            == [c.value for c in first.checks])
