"""The chaos test's kill switch, loaded by every Python process the test starts (this folder is on their PYTHONPATH).

Every atomic write of cir ends in os.replace; each call counts as two events, one before the rename (the new file
complete beside its target, as in the middle of a checkpoint or output write) and one after it. The count is shared
by all processes and attempts through CIR_CHAOS_COUNTER (one byte appended per event). At event CIR_CHAOS_AT this
process sends CIR_CHAOS_SIGNAL to the grid and every process under it, itself included, and notes what it killed
in CIR_CHAOS_LOG. The grid is the first process that loads this file: it sets CIR_CHAOS_ROOT, which its children
inherit. Without CIR_CHAOS_COUNTER nothing changes.
"""

from __future__ import annotations

import json
import os
import signal

COUNTER = os.environ.get("CIR_CHAOS_COUNTER")


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


def event(where: str, target: str) -> None:
    fd = os.open(COUNTER, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, b".")
        count = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if str(count) != os.environ.get("CIR_CHAOS_AT"):
        return
    signum = signal.Signals[os.environ["CIR_CHAOS_SIGNAL"]]
    pids = descendants(int(os.environ["CIR_CHAOS_ROOT"]))
    with open(os.environ["CIR_CHAOS_LOG"], "a") as log:
        log.write(json.dumps({"event": count, "where": where, "target": target, "signal": signum.name,
                              "pid": os.getpid(), "pids": pids}) + "\n")
    for pid in [p for p in pids if p != os.getpid()] + [os.getpid()]:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


if COUNTER:
    os.environ.setdefault("CIR_CHAOS_ROOT", str(os.getpid()))
    _replace = os.replace

    def replace(src, dst, *args, **kwargs):
        event("before", str(dst))
        _replace(src, dst, *args, **kwargs)
        event("after", str(dst))

    os.replace = replace
