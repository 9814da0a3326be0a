"""An exact epoch: one pass over the pairs, every pair at most once, every DDP rank making the same batches.

The epoch's shards (in a seeded order, new each epoch) are laid end to end as one
sequence of N samples, and cut into contiguous streams, one per (rank, worker):
rank r gets samples [r M, (r + 1) M), M = N // R, and its workers split that range
as a resampled epoch would split M samples (`epoch_share`: full batches but the
last). A cut can fall inside a shard (two streams then read it: the later one
seeks to its first sample in a local tar, or reads past the earlier samples of a
streamed one without decoding them), so no stream runs dry while another has
shards left: only the last N mod R < R samples are left out. Assigning whole shards to streams instead leaves out everything a
stream gets beyond the smallest stream's total, and every stream is empty when
shards are fewer than ranks x workers (200 shards on 64 GPUs x 8 workers).

Bad samples (undecodable images, missing captions) are skipped where they are;
a stream that loses some reads on into the next stream's samples to fill its
share, so batch sizes stay equal on every rank (those pairs are then seen twice
in the epoch, and a warning says so).
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import webdataset as wds
from webdataset.utils import PipelineStage

from cir.data.epochs import EpochPlan, epoch_share
from cir.data.shard_sizes import local_path, sample_offset
from cir.data.tar_members import tar_samples

log = logging.getLogger(__name__)


class ExactEpochLayout(NamedTuple):
    """What one exact epoch looks like: N samples, M per rank, the rest left out."""

    samples: int
    shards: int
    world_size: int
    per_rank: int

    @property
    def left_out(self) -> int:
        return self.samples - self.per_rank * self.world_size

    def summary(self, num_workers: int) -> str:
        share = 100.0 * self.left_out / self.samples if self.samples else 0.0
        return (f"exact epoch: {self.samples} pairs in {self.shards} shards, {self.per_rank} per rank per epoch, "
                f"{self.left_out} left out ({share:.2f} %) to keep {self.world_size} ranks x {max(num_workers, 1)} workers in step")


def exact_epoch_layout(sizes: Sequence[int], world_size: int) -> ExactEpochLayout:
    """The epoch over shards of `sizes` samples on `world_size` ranks (the left out part does not depend on workers)."""
    total = sum(sizes)
    return ExactEpochLayout(total, len(sizes), world_size, total // world_size)


def stream_start(per_rank: int, batch_size: int, world_size: int, num_workers: int, rank: int, worker: int) -> int:
    """Where (rank, worker)'s stream starts in the epoch's sequence of samples."""
    before = sum(epoch_share(per_rank * world_size, batch_size, world_size, num_workers, k) for k in range(worker))
    return rank * per_rank + before


class ExactEpochSamples(PipelineStage):
    """The raw samples of this process's stream (plan's rank and worker), shuffled within the stream, then spares.

    First stage of an exact-epoch pipeline: it replaces the shard list, the tar
    reader and the sample shuffle. `epoch` counts up from -1 at each iteration;
    a resumed run sets it (ImageTextPipeline.resume).
    """

    def __init__(self, urls: Sequence[str], sizes: Sequence[int], plan: EpochPlan, *, batch_size: int, seed: int,
                 shuffle_buffer: int, handler: Callable[[Exception], bool]) -> None:
        self.urls, self.sizes = list(urls), list(sizes)
        self.plan = plan
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.handler = handler
        self.epoch = -1

    def shard_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.urls)))
        if self.shuffle_buffer:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def run(self) -> Iterator[dict[str, Any]]:
        self.epoch += 1
        plan = self.plan
        layout = exact_epoch_layout(self.sizes, plan.world_size)
        start = stream_start(layout.per_rank, self.batch_size, plan.world_size, plan.num_workers, plan.rank, plan.worker)
        length = epoch_share(layout.per_rank * plan.world_size, self.batch_size, plan.world_size, plan.num_workers, plan.worker)
        sequence = self._sequence(self.shard_order(self.epoch), start)
        own = itertools.islice(sequence, length)
        if self.shuffle_buffer:
            own = wds.detshuffle(self.shuffle_buffer, seed=self.seed, epoch=self.epoch - 1).run(own)
        yield from own
        for spare, sample in enumerate(sequence):  # only pulled when skipped samples left the stream short
            if spare == 0:
                log.warning("rank %d worker %d: skipped samples left its share short; the next share's samples fill in "
                            "(seen twice this epoch)", plan.rank, plan.worker)
            yield sample

    def _sequence(self, order: list[int], start: int) -> Iterator[dict[str, Any]]:
        """The epoch's samples from position `start` on, wrapping around at the end (for spares)."""
        offset, read = 0, 1
        while read:  # a whole pass that read nothing (the shards hold less than their counts say) ends it
            read = 0
            for index in order:
                size = self.sizes[index]
                if offset + size > start:
                    for sample in self._shard(self.urls[index], max(start - offset, 0)):
                        read += 1
                        yield sample
                offset += size

    def _shard(self, url: str, first: int) -> Iterator[dict[str, Any]]:
        """A shard's samples from number `first` on: a local tar from the byte where that sample starts."""
        path = local_path(url)
        offset = sample_offset(path, first) if first and path is not None else None
        samples = tar_samples([{"url": url}], self.handler, offset or 0)
        yield from itertools.islice(samples, first if offset is None else 0, None)
