"""A grid's CLI calls as child processes that end with their grid.

Each child leads a process group of its own (its DataLoader workers and DDP
ranks join it), so the grid can signal all of it: a signal that stops the grid
(SIGTERM, `timeout`, Ctrl-C; cir.signals) is passed to the running child's
group, the grid waits for the child to stop (cir.fit saves a checkpoint first)
and says so; a second signal kills the group at once. A grid killed outright
(SIGKILL) cannot pass anything on: on Linux the kernel then sends the child
SIGTERM (PR_SET_PDEATHSIG), so no child trains on without its grid.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Sequence

from cir.signals import STOP_SIGNALS, Stopped

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _in_child(parent: int, mask: set[signal.Signals]) -> None:
    """In the child before exec: the grid's signal mask as it was before the start, and SIGTERM when the grid dies
    (Linux; elsewhere nothing)."""
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the grid died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def exit_text(code: int) -> str:
    """`status 2`, or `SIGTERM` for a child ended by a signal (negative code) or exiting 128 + signal."""
    number = -code if code < 0 else code - 128 if 128 < code < 128 + signal.NSIG else 0
    return f"{signal.Signals(number).name} (status {code})" if number in signal.valid_signals() else f"status {code}"


def run_child(command: Sequence[str]) -> None:
    """Run `command` to its end; CalledProcessError when it fails or a signal ended it."""
    parent, child = os.getpid(), None
    # a signal while the child starts waits until `child` is set, so that no child outlives its grid unsignalled
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        try:
            child = subprocess.Popen(list(command), start_new_session=True, preexec_fn=lambda: _in_child(parent, mask))
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        code = child.wait()
    except Stopped as err:
        if child is not None:
            _stop(child, command, err)
        raise
    if code != 0:
        raise subprocess.CalledProcessError(code, list(command))


def _say(line: str) -> None:
    print(f"cir.grid: {line}", file=sys.stderr, flush=True)


def _stop(child: subprocess.Popen, command: Sequence[str], err: Stopped) -> None:
    _say(f"{err.name}: passing it to the running call (pid {child.pid}: {shlex.join(command[1:])}) and waiting "
        "for it to stop; a second signal kills it")
    try:
        os.killpg(child.pid, err.signum)
        code = child.wait()
    except Stopped:
        os.killpg(child.pid, signal.SIGKILL)
        code = child.wait()
    except ProcessLookupError:
        code = child.wait()
    _say(f"the call (pid {child.pid}) ended with {exit_text(code)}")
