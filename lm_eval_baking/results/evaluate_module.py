"""Our Hugging Face `evaluate` comparison module: where it lives, how it is loaded, and what its output means.

`lm-eval-baking compare` computes every paired comparison through this module (`paired_comparison()`), so
what a user loads with `evaluate.load(path, module_type="comparison")` is what the gate judges. The module
itself wraps `core.stats`, so the numbers cannot disagree with the rest of the package.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from ..core.stats import Interval, PairedComparison
from ..errors import BakingError


def paired_comparison_path() -> Path:
    """The folder of the `paired_comparison` evaluate module (paired difference, CI, McNemar, MDE).

    `evaluate` loads modules by path, not by import, so this is all a caller needs; it works offline::

        import evaluate
        paired = evaluate.load(str(paired_comparison_path()), module_type="comparison")
        paired.compute(predictions1=base_scores, predictions2=adapter_scores)
    """
    return Path(__file__).resolve().parent / "paired_comparison"


@contextmanager
def _without_transformers():
    """`import evaluate` imports transformers' pipelines, and with them torch (2.5 s, measured), only to offer its
    model evaluators, which a comparison never uses; evaluate guards that import with `except ImportError`, so a
    blocked transformers keeps `compare` free of torch (evaluate's model evaluators then stay unavailable in this
    process; nothing here uses them). Nothing changes when transformers is already loaded."""
    if "transformers" in sys.modules:
        yield
        return
    sys.modules["transformers"] = None  # the import system raises ImportError for a None entry
    try:
        yield
    finally:
        if sys.modules.get("transformers", 0) is None:
            del sys.modules["transformers"]


@lru_cache(maxsize=1)
def paired_comparison():
    """The loaded evaluate module (once per process); held in memory, so computing writes no cache files."""
    try:
        with _without_transformers():
            import evaluate
    except ImportError:  # an evaluate that needs transformers at import: load it the ordinary way
        import evaluate
    try:
        return evaluate.load(str(paired_comparison_path()), module_type="comparison", keep_in_memory=True)
    except OSError as e:  # evaluate copies the module into its modules cache before importing it
        where = e.filename or "the Hugging Face modules cache"
        raise BakingError(f"evaluate could not load our paired_comparison module: cannot write {where} "
                          f"({e.strerror or e}); set HF_MODULES_CACHE (or HF_HOME) to a writable folder") from None


def comparison_from_output(out: dict) -> PairedComparison:
    """The `PairedComparison` the module's flat output describes (what `core.verdicts.judge` takes)."""
    confidence = out["confidence"]
    relative_ci = (None if out["relative_ci_low"] is None
                   else Interval(out["relative_ci_low"], out["relative_ci_high"], confidence))
    discordant = (None if out["discordant_base_better"] is None
                  else (out["discordant_base_better"], out["discordant_other_better"]))
    return PairedComparison(out["n"], out["base_mean"], out["other_mean"], out["difference"],
                            Interval(out["difference_ci_low"], out["difference_ci_high"], confidence),
                            out["relative_change"], relative_ci, out["p_value"], out["test"], discordant,
                            out["sd_difference"])
