"""Image-caption WebDataset shards as training batches for TAT.

Reads shards as img2dataset writes them (image in jpg / jpeg / png / webp, caption
in txt, metadata in json), or shards that cir.data.embed_text extended with a cached
caption embedding, and batches them inside the DataLoader workers. Bad samples are
skipped, logged and counted (per reason in `SkipStats`, and per batch in
`ImageTextBatch.skipped`, since worker processes keep their own stats); a bad
sample or an unreadable shard never ends a run.

Epochs: by default one pass over the shards, split by rank then by worker
(webdataset's split_by_node / split_by_worker); ranks can then get different
numbers of batches, which stalls DDP, so this is for one process only. An exact
epoch (cir.data.exact_epoch) is one pass in which every rank yields the same
number of batches, from the shards' sample counts (cir.data.shard_sizes). With
resampling, every (rank, worker) draws shards with replacement from its own seed
and yields a fixed share of an epoch of samples_per_epoch samples.

Resuming: an epoch's stream is a function of (seed, rank, worker, epoch), so a
resumed run regenerates the interrupted epoch and passes over the batches it had
already trained on (`ResumableLoader`) without decoding their images.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlparse

import torch
import webdataset as wds
from lightning.pytorch.utilities.combined_loader import _shutdown_workers_and_reset_iterator
from webdataset.shardlists import expand_urls
from webdataset.utils import pytorch_worker_info

from cir.data.epochs import EpochPlan, SplitByWorker, batches_per_rank, check_epoch_kind
from cir.data.exact_epoch import ExactEpochLayout, ExactEpochSamples, exact_epoch_layout
from cir.data.samples import (
    CAPTION_KEY,
    IMAGE_KEYS,
    SKIP_REASONS,
    ImageTextBatch,
    SkipStats,
    ToImageText,
    collate,
)
from cir.data.shard_sizes import shard_sizes, without_samples
from cir.data.tar_members import tarfile_to_samples

__all__ = ["CAPTION_KEY", "IMAGE_KEYS", "SKIP_REASONS", "ImageTextBatch", "ResumableLoader", "SkipStats",
           "expand_shard_urls", "image_text_loader", "image_text_pipeline"]

log = logging.getLogger(__name__)


class ImageTextPipeline(wds.DataPipeline):
    """A DataPipeline of ImageTextBatch that also carries what its loader needs to know."""

    def __init__(self, *stages: Any, plan: EpochPlan, skip_stats: SkipStats, batch_size: int,
                 samples_per_epoch: int | None, num_shards: int, exact: ExactEpochLayout | None = None) -> None:
        super().__init__(*stages)
        self.plan = plan
        self.skip_stats = skip_stats
        self.batch_size = batch_size
        self.samples_per_epoch = samples_per_epoch
        self.num_shards = num_shards
        self.exact = exact

    def resume(self, epoch: int, batches: int) -> None:
        """Make the next iteration epoch `epoch` (same shards and shuffles), minus its first `batches` batches.

        Call before the loader starts its workers: they take a copy of the pipeline.
        The shard sampler and the shuffles count epochs up from -1 at each iteration.
        """
        for stage in self.pipeline:
            if isinstance(stage, (wds.ResampledShards, wds.detshuffle, ExactEpochSamples)):
                stage.epoch = epoch - 1
        self.plan.epoch = epoch - 1
        self.plan.resume_batches = batches

    def iterator1(self) -> Iterator[ImageTextBatch]:
        """One epoch: runs in the DataLoader worker, so the plan sees that worker."""
        self.plan.start_epoch()
        return super().iterator1()


def expand_shard_urls(urls: str | Sequence[str]) -> list[str]:
    """A brace pattern or list as a list of urls; local shards must exist (a typo fails here, not mid-epoch)."""
    shard_urls = expand_urls(urls) if isinstance(urls, str) else list(urls)
    if not shard_urls:
        raise ValueError(f"no shards in {urls!r}")
    missing = [u for u in shard_urls if not urlparse(u).scheme and not os.path.exists(u)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(shard_urls)} shards do not exist, e.g. {missing[:3]}")
    return shard_urls


def image_text_pipeline(
    urls: str | Sequence[str],
    *,
    image_transform: Callable,
    tokenize: Callable[[list[str]], torch.Tensor] | None,
    batch_size: int,
    resampled: bool = False,
    exact_epoch: bool = False,
    samples_per_epoch: int | None = None,
    shuffle_buffer: int = 1000,
    seed: int = 0,
    text_embedding_key: str | None = None,
) -> ImageTextPipeline:
    """Batches of (images, tokens) or, with text_embedding_key, (images, cached caption embeddings).

    urls: a brace pattern ("dir/shard-{000000..000009}.tar", "pipe:cat ...", "::"
    joins several) or a list of urls. image_transform maps an RGB PIL image to
    FloatTensor[3, H, W]; tokenize maps a list of captions to LongTensor[B, L] and
    must be None when text_embedding_key is given (no text tower is involved then).
    resampled=True draws shards with replacement, forever, and needs
    samples_per_epoch (global, over all ranks). exact_epoch=True makes an epoch one
    pass in which every rank yields the same batches (the ranks' number is read
    here: build the pipeline once the process group exists). shuffle_buffer=0 keeps the shard
    and sample order (no shuffling). Shuffles and resampling are seeded by seed,
    rank, worker and epoch (epochs advance with persistent workers, as
    image_text_loader sets them up).
    """
    if (tokenize is None) == (text_embedding_key is None):
        raise ValueError("give exactly one of tokenize (read captions) and text_embedding_key (read cached embeddings)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shuffle_buffer < 0:
        raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
    check_epoch_kind(resampled, exact_epoch, samples_per_epoch, None)  # a plain pass splits by rank (ImageTextDataModule)
    shard_urls = expand_shard_urls(urls)
    stats = SkipStats()
    plan = EpochPlan()
    exact = None
    if exact_epoch:
        sizes = shard_sizes(shard_urls)
        exact = exact_epoch_layout(sizes, pytorch_worker_info()[1])
        if exact.per_rank == 0:
            empty = [u for u, n in zip(shard_urls, sizes) if n == 0]
            raise ValueError(f"{exact.samples} samples in {len(shard_urls)} shards, fewer than the {exact.world_size} ranks "
                             f"(empty or not a tar: {', '.join(empty[:5]) or 'none'})")
        samples_per_epoch = exact.per_rank * exact.world_size
        stages: list[Any] = [ExactEpochSamples(shard_urls, sizes, plan, batch_size=batch_size, seed=seed,
                                               shuffle_buffer=shuffle_buffer, handler=stats.shard_error)]
    elif resampled:
        if without_samples(shard_urls):  # drawing from them would never yield a sample, nor end
            raise ValueError(f"no shard holds a sample ({len(shard_urls)} shards, all local: "
                             f"{', '.join(shard_urls[:5])}{', ...' if len(shard_urls) > 5 else ''})")
        stages = [wds.ResampledShards(shard_urls, seed=seed, worker_seed=plan.seed, deterministic=True)]
    else:
        stages = [
            wds.SimpleShardList(shard_urls),
            wds.detshuffle(len(shard_urls), seed=seed) if shuffle_buffer else None,
            wds.split_by_node,
            SplitByWorker(plan),
        ]
    if not exact_epoch:
        stages += [tarfile_to_samples(handler=stats.shard_error), wds.detshuffle(shuffle_buffer, seed=seed) if shuffle_buffer else None]
    return ImageTextPipeline(
        *stages,
        ToImageText(stats, image_transform, text_embedding_key, plan, batch_size, samples_per_epoch, seed),
        wds.batched(batch_size, collation_fn=functools.partial(collate, tokenize=tokenize), partial=True),
        plan=plan,
        skip_stats=stats,
        batch_size=batch_size,
        samples_per_epoch=samples_per_epoch,
        num_shards=len(shard_urls),
        exact=exact,
    )


def _pin_rank(rank: int, world_size: int, worker_id: int) -> None:
    """Give workers the parent's rank through the env vars webdataset reads first.

    Forked workers inherit torch.distributed's state, spawned ones do not; without
    this, a spawned worker would read every shard as if it were rank 0 of 1.
    """
    os.environ["RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world_size)


class ResumableLoader(wds.WebLoader):
    """A WebLoader that takes a place in training from checkpoints written before the DataModule carried it.

    Where training stands in the data now travels in ImageTextDataModule's own checkpoint state (Lightning
    may build this loader before it restores the loops, too late for a loader's state); an older checkpoint
    holds it as this loader's state (Lightning's `_Stateful` protocol), which `load_state_dict` still applies.
    """

    def __init__(self, pipeline: ImageTextPipeline, **kwargs: Any) -> None:
        super().__init__(pipeline, **kwargs)
        self.image_text_pipeline = pipeline

    def shutdown(self) -> None:
        """End the persistent workers now, as Lightning does at teardown for a plain DataLoader: it cannot see the
        one inside this wrapper, whose workers would otherwise live, holding their shared-memory batches, until the
        garbage collector finds them (in the test suite, a collection during a later test waited 5 s for each
        worker, whose join timed out)."""
        _shutdown_workers_and_reset_iterator(self.pipeline[0])

    def state_dict(self) -> dict[str, int]:
        return {}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state:
            self.image_text_pipeline.resume(state["epoch"], state["batches"])


def image_text_loader(pipeline: ImageTextPipeline, num_workers: int, *, pin_memory: bool = False) -> ResumableLoader:
    """A DataLoader over a pipeline that batches in its workers.

    Rank and world size come from RANK / WORLD_SIZE when both are set (torchrun,
    SLURM), else from torch.distributed once initialised (Lightning DDP), read
    here in the parent. A resampled or exact-epoch loader has a length: the batches every rank yields.
    """
    rank, world_size, _, _ = pytorch_worker_info()
    loader = ResumableLoader(
        pipeline,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        worker_init_fn=functools.partial(_pin_rank, rank, world_size),
        # Its own generator for the workers' base seed, drawn at each iter(): else the draw comes from the training
        # process's global generator, shifting the model's dropout masks by whether the run was resumed. The
        # workers' generators seed nothing the data depends on (sample draws: cir.data.sample_rng).
        generator=torch.Generator(),
    )
    if pipeline.exact is not None and rank == 0:
        log.info("%s", pipeline.exact.summary(num_workers))
    if pipeline.samples_per_epoch is not None:
        return loader.with_length(batches_per_rank(pipeline.samples_per_epoch, pipeline.batch_size, world_size), silent=True)
    streams = world_size * max(num_workers, 1)
    if pipeline.num_shards < streams:
        log.warning("%d shards for %d ranks x workers: some workers get no data", pipeline.num_shards, streams)
    if world_size > 1:
        log.warning("a plain pass gives %d ranks different numbers of batches; use exact_epoch=True under DDP", world_size)
    return loader
