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

A run of several processes whose peer dies (killed, out of memory, its node gone)
fails in the next collective with gloo's "Connection closed by peer [ADDRESS]:PORT";
the command turns that into RankLost, one line naming the rank and host that were
lost, from the table of ranks every process noted at train start (`note_peers`).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_received: list[int] = []  # the stop signals this command received, whichever handler took them
_peers: list[tuple[int, str, str]] = []  # (rank, host name, address) of every other rank of the run
# gloo's message when a collective finds a peer gone: "[.../pair.cc:561] Connection closed by peer [10.0.0.2]:8418",
# "[...] Read error [10.0.0.2]:8418: Connection reset by peer"
GLOO_PEER_LOST = re.compile(r"gloo/transport/\S+\] ([^\[\]]+?) \[([^\]]+)\]:\d+(?:: ([^.]+))?")


def note(signum: int) -> None:
    """A handler took `signum`: remember a stop signal, so an error it causes later is read as the stop."""
    if signum in STOP_SIGNALS:
        _received.append(signum)


def received() -> int:
    """The first stop signal this command received (0: none)."""
    return _received[0] if _received else 0


def note_peers(peers: list[tuple[str, str]], own: int) -> None:
    """Every rank's (host name, address), by rank, and this process's rank: where a lost peer is looked up."""
    _peers[:] = [(rank, host, address) for rank, (host, address) in enumerate(peers) if rank != own]


class RankLost(RuntimeError):
    """A peer of this run of several processes is gone: the message names its rank and host, in one line."""


def rank_lost(err: BaseException) -> RankLost | None:
    """RankLost for gloo's error about a peer that closed or reset its connection, in `err` or in an error it was
    raised from or while handling (srun --kill-on-bad-exit's SIGTERM can land while Lightning tears the run down
    after the failed collective), else None. A host's address stands for every rank on it: with several there,
    the message names them all."""
    found, seen = None, set()
    while err is not None and found is None and id(err) not in seen:
        seen.add(id(err))
        found = GLOO_PEER_LOST.search(str(err))
        err = err.__cause__ or err.__context__
    if found is None:
        return None
    what, address, why = found.groups()
    there = [(rank, host) for rank, host, addr in _peers if addr == address]
    who = (f"rank {' or '.join(str(rank) for rank, _ in there)} on {there[0][1]} ({address})" if there
           else f"the peer at {address}")
    return RankLost(f"lost {who}: gloo says {what.lower()}{f': {why.lower()}' if why else ''}; its own output "
                    "says why it ended, and rerunning the same command resumes from the last checkpoint")


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
    the first started, as a second Ctrl-C does); notes each, as every handler of ours does."""

    def __init__(self) -> None:
        self.pid = os.getpid()

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self.pid:  # a forked child: end it the default way
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
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
    except BaseException as err:
        lost = rank_lost(err)
        if lost is not None:  # the peer's end came first; the signal it brought (srun --kill-on-bad-exit) is its echo
            raise lost from err
        if isinstance(err, Stopped):
            stopped(command, err)
        if not received() or (isinstance(err, SystemExit) and err.code not in (None, 0)):
            raise
        stopped(command, Stopped(received()))
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
