"""`report` and `check`: the leaderboard and the CI gate. Neither loads torch."""

from __future__ import annotations

import sys
from pathlib import Path

from ..core.verdicts import EXIT_CODES, MAX_FORGETTING_DROP_PCT, Verdict
from ..results.gate import NAMED_THRESHOLDS
from .options import output_path, refuse_renamed


def register(commands) -> None:
    report = commands.add_parser("report", help="leaderboard (Markdown + HTML) from lm_eval results and bakes")
    report.add_argument("results", nargs="+", type=Path, metavar="RESULTS",
                        help="lm_eval --output_path folders, results_*.json files, bake or pursuit folders")
    report.add_argument("--output", "-o", type=output_path, required=True,
                        help="folder for report.md, report.html, report.json and the plots (replaced as a whole)")
    report.add_argument("--title", default="lm-eval-baking report", help="the report's title")
    refuse_renamed(report, "--forgetting-threshold", "--max-forgetting-drop-pct")
    report.add_argument("--max-forgetting-drop-pct", type=float, default=None,
                        help=f"drop (%%) the forgetting heatmap marks as failing (default: {MAX_FORGETTING_DROP_PCT})")
    report.set_defaults(run=_run_report)

    check = commands.add_parser(
        "check", help="regression gate: PASS / FAIL / INCONCLUSIVE per metric, judged on its 95%% CI",
        description="Exit 0 when every check passes, 1 when any fails, 3 when none fails but one is inconclusive "
                    "(its CI straddles the limit), 2 on bad input.",
    )
    check.add_argument("results", nargs="+", type=Path, metavar="RESULTS",
                       help="lm_eval --output_path folders or results_*.json files")
    for option, _, _, text in NAMED_THRESHOLDS:
        check.add_argument(option, type=str, default=None, metavar="X", help=text.replace("%", "%%"))
    refuse_renamed(check, "--max-forgetting", "--max-forgetting-drop-pct")
    check.add_argument("--min", action="append", default=[], metavar="NAME=VALUE",
                       help="lower bound for any metric: a column name or TASK:METRIC (repeatable)")
    check.add_argument("--max", action="append", default=[], metavar="NAME=VALUE",
                       help="upper bound for any metric (repeatable)")
    check.add_argument("--baseline", nargs="+", type=Path, metavar="RESULTS",
                       help="earlier results: no shared headline metric may get worse by more than --tolerance")
    check.add_argument("--tolerance", default=None,
                       help="allowed move in the worse direction: absolute (0.02) or relative (5%%); default 0")
    check.add_argument("--variant", action="append", dest="variants", metavar="LABEL",
                       help="judge this report variant (repeatable; default: every adapter without a system prompt)")
    check.add_argument("--inconclusive", choices=("pass", "fail"), default=None,
                       help="treat an inconclusive gate as passing (exit 0) or failing (exit 1) instead of exit 3")
    check.set_defaults(run=_run_check)

    matrix = commands.add_parser(
        "check-matrix", help="gate on a cross-task matrix: exit 0 pass, 1 fail, 3 inconclusive, 2 bad input",
        description="Re-judges every cell of a `cross-task` run from its per-doc scores (paired CIs, Bonferroni "
                    "over the cells). Exit 0 when every cell passes, 1 when any fails, 3 when none fails but one is "
                    "inconclusive (more docs would resolve it), 2 on bad input.")
    matrix.add_argument("report", type=Path, metavar="CROSS_TASK",
                        help="a cross-task output folder or its cross_task.json")
    refuse_renamed(matrix, "--threshold", "--max-forgetting-drop-pct")
    matrix.add_argument("--max-forgetting-drop-pct", type=float, default=None, metavar="PCT",
                        help=f"largest allowed relative drop (%%) of another task's score (default: the run's, "
                             f"{MAX_FORGETTING_DROP_PCT})")
    matrix.add_argument("--min-share", type=float, default=None, metavar="S",
                        help="least share of the k-shot gain a bake must keep on its own task (default: the run's, 0.5)")
    matrix.set_defaults(run=_run_check_matrix)


def _run_report(args) -> None:
    from ..results.render import markdown_table
    from ..results.report import build_report
    from ..results.tables import leaderboard

    report = build_report(args.results, args.output, max_forgetting_drop_pct=args.max_forgetting_drop_pct,
                          title=args.title)
    header, cells = leaderboard(report.collection)
    print(markdown_table([h for h in header[:7]], [line[:7] for line in cells]))
    if report.collection.skipped:
        print(f"\nSkipped {len(report.collection.skipped)} input(s); see the report's Skipped section")
    print(f"\nWrote {report.markdown} and {report.html}")


def _run_check(args) -> int:
    from ..results.gate import check, format_checks, named_threshold, overall, parse_bound

    thresholds = [named_threshold(option, getattr(args, option[2:].replace("-", "_")))
                  for option, *_ in NAMED_THRESHOLDS if getattr(args, option[2:].replace("-", "_")) is not None]
    thresholds += [parse_bound(text, "min") for text in args.min]
    thresholds += [parse_bound(text, "max") for text in args.max]
    checks = check(args.results, thresholds, baseline=args.baseline, tolerance=args.tolerance,
                   variants=args.variants)
    print(format_checks(checks))
    sys.stdout.flush()
    verdict = overall(checks)
    if verdict == Verdict.INCONCLUSIVE and args.inconclusive:
        return 0 if args.inconclusive == "pass" else 1
    return EXIT_CODES[verdict]


def _run_check_matrix(args) -> int:
    from ..constants import CROSS_TASK_RECORD
    from ..errors import BakingError
    from ..results.cross_task import check_matrix_settings, format_summary, judge_report
    from ..utils.jsonl import read_json_object

    check_matrix_settings(args.max_forgetting_drop_pct, args.min_share)  # settings before files
    path = args.report / CROSS_TASK_RECORD if args.report.is_dir() else args.report
    data = read_json_object(path)
    if data is None:
        raise BakingError(f"{path} is missing or not a JSON object; pass a `lm-eval-baking cross-task` output folder")
    data["matrix"] = judge_report(data, max_forgetting_drop_pct=args.max_forgetting_drop_pct,
                                  min_share=args.min_share)
    print(format_summary(data))
    sys.stdout.flush()
    return EXIT_CODES[data["matrix"]["verdict"]]
