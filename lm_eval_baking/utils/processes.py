"""Child processes that end with us: every command the package spawns (lm_eval, pip) goes through `run_child`.

A child runs in a session (so a process group) of its own. Ctrl-C at the
terminal then reaches only us, and every way out of `run_child` other than
the child's own exit (Ctrl-C, an exception, a signal turned into one) ends the
child's whole group: SIGTERM, `TERMINATE_GRACE_S` to finish, then SIGKILL.

A `kill -9` of us runs none of our code, so on Linux the child also asks the
kernel (prctl PR_SET_PDEATHSIG) for a SIGTERM when we die, and its own SIGTERM
handling ends it (Python's default: exit at once). That signal reaches the
direct child only; whatever it spawned itself is its to end.

Elsewhere (macOS, the BSDs) there is no parent-death signal: a `kill -9` of us
leaves the child to run to its end, writing only into a staging folder that the
next run removes (`utils.atomic.remove_stale_staging`); Ctrl-C and errors still
end its group.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from typing import IO, Callable, Mapping, Sequence

TERMINATE_GRACE_S = 10.0
"""How long a child has, after our SIGTERM, to exit by itself before its group gets SIGKILL."""

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def run_child(argv: Sequence[str], env: Mapping[str, str] | None = None, *,
              stdout: int | IO | None = None, stderr: int | IO | None = None,
              cwd: str | os.PathLike | None = None) -> int:
    """Run `argv` to its end and return its exit status (negative: killed by that signal); see the module doc."""
    process = subprocess.Popen(list(argv), env=None if env is None else dict(env), stdout=stdout, stderr=stderr,
                               cwd=cwd, start_new_session=True, preexec_fn=_die_with_parent())
    try:
        return process.wait()
    except BaseException:
        end_group(process)
        raise


def end_group(process: subprocess.Popen) -> None:
    """SIGTERM to the child's process group, a grace period, then SIGKILL to what is left of it."""
    try:
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=TERMINATE_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
    finally:
        # Also after the child exited: its own children share its group (Linux keeps the group's id from
        # being reused while any member lives, so this reaches nobody else).
        _signal_group(process, signal.SIGKILL)
        process.wait()


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)  # start_new_session made the child its group's leader: pgid == pid
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone (PermissionError: macOS answers so for a group of zombies)


def _die_with_parent() -> Callable[[], None] | None:
    """What the child runs between fork and exec: ask for SIGTERM when this process dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    # Bound here, in the parent: the child only calls it, since after a fork in a threaded process (torch's)
    # loading a library or importing could deadlock on a lock another thread held.
    prctl = ctypes.CDLL(None).prctl  # the running program's symbols, libc's among them
    parent = os.getpid()

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)  # the parent died before the request took effect: no signal will come

    return in_child
