"""Where our Hugging Face `evaluate` comparison module lives on disk."""

from __future__ import annotations

from pathlib import Path


def paired_comparison_path() -> Path:
    """The folder of the `paired_comparison` evaluate module (paired difference, CI, McNemar, MDE).

    `evaluate` loads modules by path, not by import, so this is all a caller needs; it works offline::

        import evaluate
        paired = evaluate.load(str(paired_comparison_path()), module_type="comparison")
        paired.compute(predictions1=base_scores, predictions2=adapter_scores)
    """
    return Path(__file__).resolve().parent / "paired_comparison"
