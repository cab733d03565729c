"""Judge a forgetting.json again from its stored per-doc scores with today's statistics (no model runs).

    python bench/rejudge_forgetting.py reports/measure/forgetting-pirate/forgetting.json

Rewrites the file in place (atomically) and prints the table `lm-eval-baking forgetting` prints. For when
the statistics change after an hour of evaluation: the scores stay valid, only the verdicts are redone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lm_eval_baking.results.forgetting import ForgettingRecord, format_summary, rebuild_report
from lm_eval_baking.utils.atomic import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="a forgetting.json written by `lm-eval-baking forgetting`")
    args = parser.parse_args()
    report = rebuild_report(ForgettingRecord.from_file(args.report))
    write_json(args.report, report.to_dict())
    print(format_summary(report))


if __name__ == "__main__":
    main()
