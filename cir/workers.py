"""How many DataLoader workers: `auto` (the CPUs this process may use) or a number, said once if it is too many.

`auto` counts what a job was given, not what the machine has: SLURM_CPUS_PER_TASK when SLURM set it, else the
affinity mask (os.sched_getaffinity: taskset, cgroups' cpusets), else os.cpu_count(). A number above that is
allowed (workers waiting on I/O can pay off) and said once in one line; torch's own warning about it ("excessive
worker creation might get DataLoader running slow or even freeze") is then not repeated.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from typing import Any

from cir.config import ConfigError

AUTO = "auto"
log = logging.getLogger(__name__)


def available_cpus() -> int:
    """The CPUs this process may use (SLURM's share, else the affinity mask, else all)."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@functools.cache
def _say_too_many(key: str, workers: int, cpus: int) -> None:
    log.warning("%s=%d is more workers than the %d CPU(s) this process may use; loading may be slower than with "
                "%s=auto", key, workers, cpus, key)


def resolve_workers(value: Any, key: str) -> int:
    """`auto` -> available_cpus(); a number of 0 or more as is (said once if above the CPUs); else a ConfigError."""
    cpus = available_cpus()
    if value == AUTO:
        return cpus
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"config key `{key}`: expected auto or a number of workers (0 or more), got {value!r}")
    if value > cpus:
        _say_too_many(key, value, cpus)
        warnings.filterwarnings("ignore", message=r"This DataLoader will create \d+ worker processes in total")
    return value
