"""A command stopped by a signal ends with 128 + the signal's number, the shell's code for "ended by this signal".

Its outputs are then incomplete, so no caller (a grid, a shell's `&&`, SLURM's
`afterok`) may read the exit as success. Lightning's own SIGTERM handler only
records the signal and later raises `SIGTERMException`, a SystemExit with code
0; the handler here raises `Stopped` at once instead (Lightning calls it after
its own, keeping its DDP launcher's behaviour), and any exception that follows
a received signal (a DataLoader worker killed by the same signal) becomes
`Stopped` too. Training replaces it for the training loop with
cir.preemption.GracefulInterruption, which checkpoints first and exits with the
same code. A forked child (a DataLoader worker) is ended by the signal as if
no handler were set.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_received: list[int] = []  # the stop signals this command received, whichever handler took them


def note(signum: int) -> None:
    """A handler took `signum`: remember a stop signal, so an error it causes later is read as the stop."""
    if signum in STOP_SIGNALS:
        _received.append(signum)


def received() -> int:
    """The first stop signal this command received (0: none)."""
    return _received[0] if _received else 0


class Stopped(SystemExit):
    """A signal stopped the command before its outputs were complete; the exit status is 128 + its number."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class _Handler:
    """Raises Stopped in the process that installed it, at every signal (a second one interrupts the cleanup that
    the first started, as a second Ctrl-C does); remembers the first."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.received = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self.pid:  # a forked child: end it the default way
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = self.received or signum
        note(signum)
        raise Stopped(signum)


@contextlib.contextmanager
def stop_on_signals(command: str | None = None) -> Iterator[None]:
    """SIGTERM, SIGINT and SIGHUP end `command` with Stopped (exit 128 + signal), saying so in one line on stderr."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    command = command or command_name()
    handler = _Handler()
    _received.clear()
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    except Stopped as err:
        stopped(command, err)
    except BaseException as err:
        if not handler.received or (isinstance(err, SystemExit) and err.code not in (None, 0)):
            raise
        stopped(command, Stopped(handler.received))
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def command_name() -> str:
    """`cir.evaluate` for `python -m cir.evaluate` (what a user typed), else the script's name."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name.removesuffix(".__main__") if spec is not None else os.path.basename(sys.argv[0])


def stopped(command: str, err: Stopped) -> None:
    print(f"{command}: stopped by {err.name} before its outputs were complete (exit status {err.code})",
          file=sys.stderr, flush=True)
    raise err from None
