"""Which process am I, and the one gather the library needs: every "rank" question asked in one place.

Works with or without an initialised torch.distributed group (a 1-process run is
rank 0 of 1), so library code never branches on how it was launched.
"""

from __future__ import annotations

import socket

import torch
import torch.distributed as dist
from torchmetrics.utilities.distributed import gather_all_tensors


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def end_process_group() -> None:
    """Destroy the process group once the run's last collective is done, on every rank. Left to interpreter exit,
    gloo's worker threads can still hold work whose tensors Python is tearing down, and the process aborts
    ('terminate called without an active exception', pytorch#190489): srun then fails a finished job. Only where
    nothing is in flight: destroying waits for the group's queued work, which a peer that stopped taking part
    would hold up."""
    if is_distributed():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_global_zero() -> bool:
    return rank() == 0


def rank_slice(n: int) -> slice:
    """This process's strided share of n items: every item on exactly one rank, whatever n."""
    return slice(rank(), n, world_size())


def gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's tensor (first dimensions may differ between ranks)."""
    return torch.cat(gather_all_tensors(tensor)) if world_size() > 1 else tensor


def hosts() -> list[tuple[str, str]]:
    """Every rank's (host name, the address that name resolves to, which gloo connects to), by rank."""
    name = socket.gethostname()
    try:
        here = (name, socket.gethostbyname(name))
    except OSError:  # a name without an address: gloo then uses another, which a lost peer's message will show
        here = (name, "")
    if world_size() == 1:
        return [here]
    table: list[tuple[str, str] | None] = [None] * world_size()
    dist.all_gather_object(table, here)
    return table
