"""dacite on the recipe classes (issue 26 item 3): what it says for each damaged key the recipe tests use.

    pip install --target /tmp/dacite 'dacite>=1.8,<2'    # not a dependency: the evaluation only
    PYTHONPATH=.:/tmp/dacite python bench/recipe_parsers_dacite.py

The verdict (dacite was not adopted) and why: workflows/recipe.py's docstring; output of the last run:
bench/results/recipe_parsers.txt.
"""
import copy, dataclasses
from importlib.metadata import version
from pathlib import Path
import yaml, dacite
from dacite import Config, from_dict
from lm_eval_baking.errors import BakingError
from lm_eval_baking.workflows.recipe import RecipeSpec, DriftCheck, load_recipe

demo = yaml.safe_load(Path("recipes/demo.yaml").read_text())
cfg = Config(strict=True, check_types=True, cast=[Path, tuple])

def attempt(label, damage):
    data = copy.deepcopy(demo); damage(data)
    try:
        from_dict(RecipeSpec, data, cfg); print(f"{label}: ACCEPTED")
    except (dacite.DaciteError, BakingError) as e:
        print(f"{label}: {type(e).__name__}: {e}")

print("dacite", version("dacite"))
attempt("0 demo.yaml as is", lambda r: None)
attempt("1 stages[1].pursuit.max_rounds='three'", lambda r: r["stages"][1]["pursuit"].update(max_rounds="three"))
attempt("2 stages[1].pursuit.max_roundz=2 (unknown)", lambda r: r["stages"][1]["pursuit"].update(max_roundz=2))
attempt("3 validation.drift.turns=0 (__post_init__)", lambda r: r["validation"]["drift"].update(turns=0))
attempt("4 validation.batch_size=true", lambda r: r["validation"].update(batch_size=True))
attempt("5 validation.forgetting.tasks='x'", lambda r: r["validation"]["forgetting"].update(tasks="x"))
attempt("6 validation.forgetting.max_forgetting_drop_pct=5 (an int)", lambda r: r["validation"]["forgetting"].update(max_forgetting_drop_pct=5))
attempt("7 stages[0] without name", lambda r: r["stages"][0].pop("name"))
attempt("8 output: '' (empty path)", lambda r: r.update(output=""))

print("\n-- again with validation.drift's flattened ConversationSettings keys nested by hand (dacite has no flatten) --")
from lm_eval_baking.evals.config import ConversationSettings
conv = {f.name for f in dataclasses.fields(ConversationSettings)}
def nest(r):
    d = r["validation"]["drift"]
    r["validation"]["drift"] = {**{k: v for k, v in d.items() if k not in conv}, "conversations": {k: v for k, v in d.items() if k in conv}}
def attempt2(label, damage):
    data = copy.deepcopy(demo); damage(data); nest(data)
    try:
        spec = from_dict(RecipeSpec, data, cfg); print(f"{label}: ACCEPTED" + (f" -> {spec.validation.batch_size!r}" if "batch" in label else ""))
    except (dacite.DaciteError, BakingError) as e:
        print(f"{label}: {type(e).__name__}: {e}")
attempt2("0 demo.yaml as is", lambda r: None)
attempt2("2 stages[1].pursuit.max_roundz=2 (unknown)", lambda r: r["stages"][1]["pursuit"].update(max_roundz=2))
attempt2("3 validation.drift.turns=0 (__post_init__)", lambda r: r["validation"]["drift"].update(turns=0))
attempt2("4 validation.batch_size=true", lambda r: r["validation"].update(batch_size=True))
attempt2("5 validation.forgetting.tasks='x'", lambda r: r["validation"]["forgetting"].update(tasks="x"))
attempt2("6 validation.forgetting.max_forgetting_drop_pct=5 (an int)", lambda r: r["validation"]["forgetting"].update(max_forgetting_drop_pct=5))
attempt2("8 output: '' (empty path)", lambda r: r.update(output=""))
attempt2("9 validation.drift.probes_at=[1, 'x']", lambda r: r["validation"]["drift"].update(probes_at=[1, "x"]))
full = from_dict(RecipeSpec, (lambda d: (nest(d), d)[1])(copy.deepcopy(demo)), cfg)
print("demo parses equal to from_mapping's:", full == __import__("lm_eval_baking.utils.settings", fromlist=["x"]).from_mapping(RecipeSpec, demo))
