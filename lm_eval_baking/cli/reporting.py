"""`report` and `check`: the leaderboard and the CI gate. Neither loads torch."""

from __future__ import annotations

import sys

from ..core.verdicts import EXIT_CODES, Verdict
from ..results.settings import CheckMatrixSettings, CheckSettings, ReportSettings
from .options import add_settings, refuse_renamed, settings_from_args


def register(commands) -> None:
    report = commands.add_parser("report", help="leaderboard (Markdown + HTML) from lm_eval results and bakes")
    add_settings(report, ReportSettings)
    refuse_renamed(report, "--forgetting-threshold", "--max-forgetting-drop-pct")
    report.set_defaults(run=_run_report)

    check = commands.add_parser(
        "check", help="regression gate: PASS / FAIL / INCONCLUSIVE per metric, judged on its 95%% CI",
        description="Exit 0 when every check passes, 1 when any fails, 3 when none fails but one is inconclusive "
                    "(its CI straddles the limit), 2 on bad input.",
    )
    add_settings(check, CheckSettings)
    refuse_renamed(check, "--max-forgetting", "--max-forgetting-drop-pct")
    check.set_defaults(run=_run_check)

    matrix = commands.add_parser(
        "check-matrix", help="gate on a cross-task matrix: exit 0 pass, 1 fail, 3 inconclusive, 2 bad input",
        description="Re-judges every cell of a `cross-task` run from its per-doc scores (paired CIs, Bonferroni "
                    "over the cells). Exit 0 when every cell passes, 1 when any fails, 3 when none fails but one is "
                    "inconclusive (more docs would resolve it), 2 on bad input.")
    add_settings(matrix, CheckMatrixSettings)
    refuse_renamed(matrix, "--threshold", "--max-forgetting-drop-pct")
    matrix.set_defaults(run=_run_check_matrix)


def _run_report(args) -> None:
    from ..results.render import markdown_table
    from ..results.report import build_report
    from ..results.tables import leaderboard

    settings = settings_from_args(ReportSettings, args)
    report = build_report(settings.results, settings.output, max_forgetting_drop_pct=settings.max_forgetting_drop_pct,
                          title=settings.title)
    header, cells = leaderboard(report.collection)
    print(markdown_table([h for h in header[:7]], [line[:7] for line in cells]))
    if report.collection.skipped:
        print(f"\nSkipped {len(report.collection.skipped)} input(s); see the report's Skipped section")
    print(f"\nWrote {report.markdown} and {report.html}")


def _run_check(args) -> int:
    from ..results.gate import check, format_checks, overall

    settings = settings_from_args(CheckSettings, args)
    checks = check(settings.results, settings.thresholds(), baseline=settings.baseline,
                   tolerance=settings.tolerance, variants=settings.variants)
    print(format_checks(checks))
    sys.stdout.flush()
    verdict = overall(checks)
    if verdict == Verdict.INCONCLUSIVE and settings.inconclusive:
        return 0 if settings.inconclusive == "pass" else 1
    return EXIT_CODES[verdict]


def _run_check_matrix(args) -> int:
    from dataclasses import replace

    from ..errors import BakingError
    from ..results.cross_task import format_summary, judge_report
    from ..results.cross_task_record import CrossTaskRecord

    settings = settings_from_args(CheckMatrixSettings, args)  # settings before files
    path = settings.report / CrossTaskRecord.FILE if settings.report.is_dir() else settings.report
    if not path.is_file():
        raise BakingError(f"{path} is missing; pass a `lm-eval-baking cross-task` output folder")
    report = CrossTaskRecord.from_file(path)
    report = replace(report, matrix=judge_report(report, max_forgetting_drop_pct=settings.max_forgetting_drop_pct,
                                                 min_share=settings.min_share))
    print(format_summary(report))
    sys.stdout.flush()
    return EXIT_CODES[report.matrix["verdict"]]
