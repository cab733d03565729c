"""pydantic 2 on the recipe classes (issue 26 item 3), for comparison with bench/recipe_parsers_dacite.py.

    PYTHONPATH=. python bench/recipe_parsers_pydantic.py     # pydantic is in the venv through typer only

Sets `__pydantic_config__` on the recipe classes of this process (extra="forbid"); the flattened drift keys
are nested by hand, as pydantic has no flattened section.
"""
import copy, dataclasses
from pathlib import Path
import yaml, pydantic
from pydantic import TypeAdapter, ConfigDict, ValidationError
from lm_eval_baking.errors import BakingError
from lm_eval_baking.workflows import recipe as R
from lm_eval_baking.evals.config import ConversationSettings
from lm_eval_baking.compose.config import ComposeSettings, PursuitSettings
print("pydantic", pydantic.VERSION)
demo = yaml.safe_load(Path("recipes/demo.yaml").read_text())
conv = {f.name for f in dataclasses.fields(ConversationSettings)}
def nest(r):
    d = r["validation"]["drift"]
    r["validation"]["drift"] = {**{k: v for k, v in d.items() if k not in conv}, "conversations": {k: v for k, v in d.items() if k in conv}}
for cls in (R.RecipeSpec, R.StageSpec, R.MckLCheck, R.PursuedCheck, R.DriftCheck, R.ForgettingCheck, R.Validation, ConversationSettings, ComposeSettings, PursuitSettings):
    cls.__pydantic_config__ = ConfigDict(extra="forbid")
ta = TypeAdapter(R.RecipeSpec)
def attempt(label, damage):
    data = copy.deepcopy(demo); damage(data); nest(data)
    try:
        ta.validate_python(data); print(f"{label}: ACCEPTED")
    except ValidationError as e:
        err = e.errors()[0]; print(f"{label}: ValidationError loc={err['loc']} type={err['type']} msg={err['msg']!r}")
    except BakingError as e:
        print(f"{label}: BakingError (unwrapped, no loc): {e}")
attempt("0 demo.yaml as is", lambda r: None)
attempt("1 stages[1].pursuit.max_rounds='three'", lambda r: r["stages"][1]["pursuit"].update(max_rounds="three"))
attempt("2 stages[1].pursuit.max_roundz=2", lambda r: r["stages"][1]["pursuit"].update(max_roundz=2))
attempt("3 validation.drift.turns=0", lambda r: r["validation"]["drift"].update(turns=0))
attempt("4 validation.batch_size=true", lambda r: r["validation"].update(batch_size=True))
attempt("5 validation.forgetting.tasks='x'", lambda r: r["validation"]["forgetting"].update(tasks="x"))
attempt("6 validation.batch_size='16' (a string)", lambda r: r["validation"].update(batch_size="16"))
attempt("7 stages[0] without name", lambda r: r["stages"][0].pop("name"))

print("\n-- strict=True in every class's config --")
for cls in (R.RecipeSpec, R.StageSpec, R.MckLCheck, R.PursuedCheck, R.DriftCheck, R.ForgettingCheck, R.Validation, ConversationSettings, ComposeSettings, PursuitSettings):
    cls.__pydantic_config__ = ConfigDict(extra="forbid", strict=True)
ta = TypeAdapter(R.RecipeSpec)
attempt("0 demo.yaml as is", lambda r: None)
