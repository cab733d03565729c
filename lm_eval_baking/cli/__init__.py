"""The `lm-eval-baking` command: the only place argparse is used, a thin layer over the Python API.

Each command imports its implementation when it runs, not when the parser is
built, so `tasks-path`, `report`, `check` and every `--help` start without
loading torch. Options come from the config dataclasses (`cli/options.py`).
"""

from __future__ import annotations

import argparse
import sys

from ..errors import BakingError
from . import baking, composing, evaluating, reporting, running


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)  # inside: an option's type may refuse its value as a BakingError
        return args.run(args) or 0
    except BakingError as e:
        print(f"lm-eval-baking: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        # bake() re-raises with where its work was kept; a bare Ctrl-C elsewhere has no message.
        detail = str(e) or "nothing was written at the output path"
        print(f"lm-eval-baking: interrupted; {detail}", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lm-eval-baking", description="Bake prompts into PEFT LoRA adapters and validate them with "
                                           "lm-evaluation-harness.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (baking, composing, evaluating, reporting, running):
        module.register(commands)
    return parser
