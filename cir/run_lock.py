"""One run per output_dir: rank 0 holds a lock in it for the whole run, and a second run stops at once naming the holder.

The lock is filelock's FileLock (flock), which the OS releases when the process
dies, however it dies, so a killed run never blocks the next one on a local
filesystem. On NFS a crashed node's lock can linger until the server's lease runs
out; a holder record beside the lock (pid, host, start time, SLURM job) tells a
live holder from a stale one: the same SLURM job (a requeued job restarting on
this or another node) or a dead process on this host is taken over with a warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from filelock import FileLock, Timeout

from cir.config import ConfigError
from cir.io import write_json

log = logging.getLogger(__name__)

LOCK_NAME = ".cir-run.lock"
HOLDER_NAME = ".cir-run.holder.json"


class RunLockedError(ConfigError):
    """Another live run holds this output_dir."""


def this_process() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def stale_reason(holder: dict[str, Any], me: dict[str, Any]) -> str | None:
    """Why a held lock is not a live other run: this SLURM job's earlier attempt, or a dead process on this host."""
    if me["slurm_job_id"] is not None and holder.get("slurm_job_id") == me["slurm_job_id"]:
        return f"an earlier attempt of SLURM job {me['slurm_job_id']}"
    if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and not pid_alive(holder["pid"]):
        return f"process {holder['pid']} on {me['host']}, which is gone"
    return None


def describe(holder: dict[str, Any]) -> str:
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('started', '?')}{job}"


class RunLock:
    """`with RunLock(out):` holds output_dir for this process; creating the lock also proves the folder writable.

    `what` is the holder's kind, recorded beside the lock and named in a refusal: a training run, an evaluation, a
    grid (cir.grid locks its folder, so two grids on one folder never run the same calls twice).
    """

    def __init__(self, out: str | Path, what: str = "run") -> None:
        self.out, self.what = Path(out), what
        self.holder_path = self.out / HOLDER_NAME
        self.lock = FileLock(self.out / LOCK_NAME, timeout=0, is_singleton=False)

    def __enter__(self) -> None:
        me = this_process()
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"config key `output_dir`: {self.out} is a file, not a folder")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
        except Timeout:
            holder = self.read_holder()
            reason = stale_reason(holder, me)
            if reason is None:
                raise RunLockedError(f"config key `output_dir`: {self.out} is in use by another "
                                     f"{holder.get('what', 'run')} ({describe(holder)}); wait for it to end, stop it, "
                                     "or choose another output_dir") from None
            log.warning("taking over the lock on %s from %s", self.out, reason)
        except OSError as err:
            raise ConfigError(f"config key `output_dir`: cannot write to {self.out}: {err.strerror or err}") from None
        write_json(self.holder_path, {**me, "what": self.what})

    def read_holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.holder_path.read_text())
        except (OSError, ValueError):
            return {}

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if self.read_holder().get("pid") == os.getpid():
            self.holder_path.unlink(missing_ok=True)
        if self.lock.is_locked:
            self.lock.release()


def rank_zero_lock(out: str | Path, what: str) -> RunLock | contextlib.nullcontext:
    """The lock on rank 0 (the rank that writes the outputs), nothing on the other ranks of a DDP run."""
    from lightning.pytorch.utilities import rank_zero_only  # the rank from the launcher's environment; a grid
    # takes its own lock without importing Lightning
    return RunLock(out, what) if rank_zero_only.rank == 0 else contextlib.nullcontext()
