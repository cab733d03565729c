"""The `lm-eval-baking` command: the only place argparse is used, a thin layer over the Python API.

Each command imports its implementation when it runs, not when the parser is
built, so `tasks-path`, `report`, `check` and every `--help` start without
loading torch. Options come from the config dataclasses (`cli/options.py`).
"""

from __future__ import annotations

import argparse
import errno
import sys

from ..errors import BakingError
from . import baking, comparing, composing, evaluating, reporting, running

_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)  # inside: an option's type may refuse its value as a BakingError
        return args.run(args) or 0
    except BakingError as e:
        print(f"lm-eval-baking: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # The net under every writer that has no message of its own: a full disk or a read-only folder is the
        # user's to fix, in one line (writers build in staging folders, so what was there before is intact).
        if e.errno not in _WRITE_ERRNOS:
            raise
        print(f"lm-eval-baking: error: cannot write {e.filename or 'the output'} ({e.strerror}); free some disk "
              "space or choose a writable --output, then rerun the same command", file=sys.stderr)
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
    for module in (baking, composing, evaluating, reporting, comparing, running):
        module.register(commands)
    return parser
