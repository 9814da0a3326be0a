"""The chaos test's kill switch, loaded by every Python process the test starts (this folder is on their PYTHONPATH).

Every atomic write of cir ends in os.replace; each call is two events, `before` the rename (the new file complete
beside its target: inside a checkpoint or output write) and `after` it. With CIR_CHAOS_TRACE set, every event is
appended to that file as `where<TAB>target`. With CIR_CHAOS_KILL set to one `where<TAB>target`, the first process to
reach that event sends CIR_CHAOS_SIGNAL to the grid and every process under it, itself last, and notes what it
killed in CIR_CHAOS_LOG (created exclusively: one kill per run, even when a SIGTERM-saved checkpoint writes the same
file again). The grid is the first process that loads this file: it sets CIR_CHAOS_ROOT, which its children inherit.
Without either variable nothing changes.
"""

from __future__ import annotations

import json
import os
import signal

TRACE, KILL = os.environ.get("CIR_CHAOS_TRACE"), os.environ.get("CIR_CHAOS_KILL")


def descendants(root: int) -> list[int]:
    """`root` and every process under it (from /proc), parents first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, queue = [], [root]
    while queue:
        pid = queue.pop(0)
        found.append(pid)
        queue += children.get(pid, [])
    return found


def kill_all(where: str, target: str) -> None:
    try:
        fd = os.open(os.environ["CIR_CHAOS_LOG"], os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:  # this run's kill has been sent
        return
    signum = signal.Signals[os.environ["CIR_CHAOS_SIGNAL"]]
    pids = descendants(int(os.environ["CIR_CHAOS_ROOT"]))
    os.write(fd, json.dumps({"where": where, "target": target, "signal": signum.name, "pid": os.getpid(),
                             "pids": pids}).encode())
    os.close(fd)
    for pid in [p for p in pids if p != os.getpid()] + [os.getpid()]:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def event(where: str, target: str) -> None:
    if TRACE:
        fd = os.open(TRACE, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{where}\t{target}\n".encode())
        finally:
            os.close(fd)
    if KILL == f"{where}\t{target}":
        kill_all(where, target)


if TRACE or KILL:
    os.environ.setdefault("CIR_CHAOS_ROOT", str(os.getpid()))
    _replace = os.replace

    def replace(src, dst, *args, **kwargs):
        event("before", str(dst))
        _replace(src, dst, *args, **kwargs)
        event("after", str(dst))

    os.replace = replace
