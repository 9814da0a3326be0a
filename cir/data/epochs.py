"""Who makes which batches of an epoch: batch sizes per rank, each DataLoader worker's share, and resuming mid-epoch.

Pure bookkeeping, shared by the shard pipeline and its tests: a resampled epoch
gives every rank the same number of batches, so DDP ranks stay in step.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

from webdataset.utils import PipelineStage, pytorch_worker_info

from cir.config import require


def check_epoch_kind(resampled: bool, exact_epoch: bool, samples_per_epoch: int | None, processes: int | None) -> None:
    """How an epoch is drawn (data.resampled, data.exact_epoch, data.samples_per_epoch) for `processes` ranks (None:
    not known yet): a plain pass, one exact pass, or samples_per_epoch draws with replacement. Checked on the config
    (cir.config_checks) and again by the shard pipeline once the process group gives the real count."""
    if resampled or samples_per_epoch is not None:
        require(resampled and (samples_per_epoch or 0) > 0, "data.samples_per_epoch",
                "a positive count together with data.resampled=true", samples_per_epoch)
    require(not (exact_epoch and resampled), "data.exact_epoch",
            "false with data.resampled=true (an epoch is either one pass or samples_per_epoch draws)", exact_epoch)
    if processes is not None and processes > 1:
        # a plain pass splits shards by rank: ranks get different batch counts and DDP hangs at the first missing one
        require(exact_epoch or resampled, "data.exact_epoch",
                f"true (or data.resampled=true with data.samples_per_epoch) for {processes} processes, so every rank "
                "makes the same number of batches", exact_epoch)


class EpochPlan:
    """Which worker's part of the epoch this process makes, and which of those batches were trained on already.

    The DataLoader takes batch j from worker j % W, so worker k makes batches k,
    k + W, ... In the epoch a run resumes in, after P batches were trained, the
    DataLoader still asks worker 0 first, for what was batch P: so worker k makes
    worker (k + P) % W's part and passes over its batches before P. Shard
    sampling, splitting and the epoch share all take the worker from here; it is
    set in each worker at the start of each epoch (`ImageTextPipeline.iterator1`), which also counts
    `epoch` up from -1 (a resumed run sets it, like the shard sampler's and the shuffles' epochs).
    """

    def __init__(self) -> None:
        self.resume_batches = 0
        self.epoch = -1
        self.rank, self.world_size, self.worker, self.num_workers = 0, 1, 0, 1
        self.done: range = range(0)

    def start_epoch(self) -> None:
        self.epoch += 1
        self.rank, self.world_size, worker, num_workers = pytorch_worker_info()
        self.num_workers = max(num_workers, 1)
        self.worker = (worker + self.resume_batches) % self.num_workers
        self.done = range(self.worker, self.resume_batches, self.num_workers)
        self.resume_batches = 0

    def seed(self) -> int:
        """webdataset's per-worker seed (pytorch_worker_seed), for the worker whose part this process makes."""
        return self.rank * 1000 + self.worker


class SplitByWorker(PipelineStage):
    """webdataset's split_by_worker, for the worker the epoch plan says."""

    def __init__(self, plan: EpochPlan) -> None:
        self.plan = plan

    def run(self, src: Iterable) -> Iterator:
        return itertools.islice(src, self.plan.worker, None, self.plan.num_workers)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def batch_sizes(samples_per_epoch: int, batch_size: int, world_size: int) -> list[int]:
    """The sizes of a rank's batches in one resampled epoch.

    Every rank gets ceil(samples_per_epoch / world_size) samples in the same
    number of batches, all full but the last one, so DDP ranks stay in step
    and a single process yields exactly samples_per_epoch. The DataLoader takes
    batch j from worker j % num_workers, so worker k makes batches k, k + num_workers, ...
    """
    per_rank = _ceil_div(samples_per_epoch, world_size)
    return [min(batch_size, per_rank - start) for start in range(0, per_rank, batch_size)]


def epoch_share(samples_per_epoch: int, batch_size: int, world_size: int, num_workers: int, worker: int) -> int:
    """Samples one DataLoader worker yields per resampled epoch."""
    return sum(batch_sizes(samples_per_epoch, batch_size, world_size)[worker::num_workers])


def batches_per_rank(samples_per_epoch: int, batch_size: int, world_size: int) -> int:
    """Batches every rank yields per resampled epoch (for schedulers and the loader length)."""
    return _ceil_div(_ceil_div(samples_per_epoch, world_size), batch_size)
