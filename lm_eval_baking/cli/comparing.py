"""`compare`: two lm_eval runs (baseline, candidate) paired doc by doc, one verdict per task and metric.
Loads neither torch nor, for `--help`, evaluate."""

from __future__ import annotations

import sys
from pathlib import Path

from ..core.verdicts import EXIT_CODES, Verdict
from ..results.compare_settings import CompareSettings
from .options import add_settings, settings_from_args


def register(commands) -> None:
    compare = commands.add_parser(
        "compare", help="paired comparison of two lm_eval --log_samples runs: PASS / FAIL / INCONCLUSIVE per task",
        description="Pairs the two runs doc by doc (doc_id and doc_hash) on every task and metric they share: the "
                    "candidate - baseline difference with its CI (McNemar's exact test for 0/1 scores, the paired "
                    "bootstrap otherwise), Holm-adjusted p-values, and a verdict against --max-drop. Exit 0 when "
                    "every row passes, 1 when one fails, 3 when none fails but one is inconclusive, 2 on bad input. "
                    "See docs/compare.md.")
    compare.add_argument("baseline", type=Path, metavar="BASELINE",
                         help="the reference run: an lm_eval --output_path folder or a results_*.json file")
    compare.add_argument("candidate", type=Path, metavar="CANDIDATE",
                         help="the run under test (e.g. the baked adapter), on the same tasks and docs")
    add_settings(compare, CompareSettings)
    compare.set_defaults(run=_run_compare)


def _run_compare(args) -> int:
    from ..results.compare import compare, markdown, write_outputs

    settings = settings_from_args(CompareSettings, args)
    result = compare(args.baseline, args.candidate, settings)
    text = markdown(result)
    write_outputs(result, settings.json, text)
    print(text, end="")
    sys.stdout.flush()
    if result.verdict == Verdict.INCONCLUSIVE.value and settings.inconclusive:
        return 0 if settings.inconclusive == "pass" else 1
    return EXIT_CODES[result.verdict]
