"""Image-caption WebDataset shards as training batches for TAT.

Reads shards as img2dataset writes them (image in jpg / jpeg / png / webp, caption
in txt, metadata in json), or shards that cir.data.embed_text extended with a cached
caption embedding, and batches them inside the DataLoader workers. Bad samples are
skipped, logged and counted (per reason in `SkipStats`, and per batch in
`ImageTextBatch.skipped`, since worker processes keep their own stats); a bad
sample or an unreadable shard never ends a run.

Multi-GPU: without resampling, shards are split by rank then by worker
(webdataset's split_by_node / split_by_worker); ranks can then get different
numbers of batches, which stalls DDP. With resampling, every (rank, worker) draws
shards with replacement from its own seed and yields a fixed share of the epoch,
so every rank yields the same number of batches.

Resuming: an epoch's stream is a function of (seed, rank, worker, epoch), so a
resumed run regenerates the interrupted epoch and passes over the batches it had
already trained on (`ResumableLoader`) without decoding their images.
"""

from __future__ import annotations

import functools
import io
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple
from urllib.parse import urlparse

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from webdataset.shardlists import expand_urls
from webdataset.utils import PipelineStage, pytorch_worker_info

from cir.data.benchmark import load_rgb

log = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
CAPTION_KEY = "txt"
SKIP_REASONS = ("shard_error", "missing_image", "bad_image", "missing_caption", "missing_embedding", "bad_embedding")
MAX_CONSECUTIVE_SKIPS = 10_000
_WARNINGS_PER_REASON = 10
# What a sample yields when nothing was skipped since the previous one (shared, never modified).
_NO_SKIPS = torch.zeros(len(SKIP_REASONS), dtype=torch.long)


class ImageTextBatch(NamedTuple):
    """One training batch.

    `texts` is LongTensor[B, L] tokens, or FloatTensor[B, D] cached caption
    embeddings when the pipeline reads a text embedding key. `skipped` is
    LongTensor[len(SKIP_REASONS)]: what the worker that made this batch skipped
    since its previous batch (summed over batches and ranks it gives the global
    count; skips after a worker's last sample of a non-resampled epoch are only
    in that worker's SkipStats and log).
    """

    images: torch.Tensor
    texts: torch.Tensor
    skipped: torch.Tensor


@dataclass
class SkipStats:
    """Skips per reason in the process that runs the pipeline (a DataLoader worker keeps its own copy).

    The first few skips per reason are logged as warnings, the rest at debug
    level. A long run of consecutive skips means the data or the transform is
    broken as a whole, not a bad sample, so it raises instead of spinning forever.
    """

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    consecutive: int = 0

    def add(self, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        self.consecutive += 1
        level = logging.WARNING if self.counts[reason] <= _WARNINGS_PER_REASON else logging.DEBUG
        log.log(level, "skipped (%s, %d so far): %s", reason, self.counts[reason], detail)
        if self.consecutive >= MAX_CONSECUTIVE_SKIPS:
            raise RuntimeError(
                f"{self.consecutive} consecutive samples or shards were skipped ({self.counts}): "
                "the shards, their keys or the image transform are broken, not a few samples"
            )

    def passed(self) -> None:
        """A sample made it through: the run of consecutive skips is over."""
        self.consecutive = 0

    def shard_error(self, exn: Exception) -> bool:
        """webdataset handler for tar-level errors (unopenable or corrupt shard): count, log, go on."""
        self.add("shard_error", repr(exn))
        return True

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def vector(self) -> torch.Tensor:
        return torch.tensor([self.counts[r] for r in SKIP_REASONS], dtype=torch.long)


class NpyReader:
    """np.load for many small .npy entries that share one header, without re-parsing that header each time.

    np.load spends most of its time on a 64-float embedding parsing the header
    (a Python literal). Every embedding that cir.data.embed_text writes has the
    same dtype and shape, hence byte-identical header bytes: an entry that starts
    with the last parsed header and holds exactly its data is read with
    np.frombuffer; anything else goes through np.load (and becomes the header
    to match next). The result equals np.load's, read-only.
    """

    _HEADER_READERS: ClassVar[dict] = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}

    def __init__(self) -> None:
        self.header = b""
        self.dtype: np.dtype | None = None
        self.shape: tuple[int, ...] = ()
        self.nbytes = -1

    def load(self, data: bytes) -> np.ndarray:
        if self.dtype is not None and len(data) == len(self.header) + self.nbytes and data.startswith(self.header):
            return np.frombuffer(data, dtype=self.dtype, offset=len(self.header)).reshape(self.shape)
        array = np.load(io.BytesIO(data), allow_pickle=False)
        self._remember(data)
        return array

    def _remember(self, data: bytes) -> None:
        """Cache the layout of a C-ordered, fixed-size array that np.load just read from `data`."""
        stream = io.BytesIO(data)
        reader = self._HEADER_READERS.get(np.lib.format.read_magic(stream))
        self.dtype = None
        if reader is None:
            return
        shape, fortran_order, dtype = reader(stream)
        if fortran_order or dtype.hasobject:
            return
        self.header, self.dtype, self.shape = data[: stream.tell()], dtype, shape
        self.nbytes = dtype.itemsize * int(np.prod(shape))


class _Skip(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class _EpochPlan:
    """Which worker's part of the epoch this process makes, and which of those batches were trained on already.

    The DataLoader takes batch j from worker j % W, so worker k makes batches k,
    k + W, ... In the epoch a run resumes in, after P batches were trained, the
    DataLoader still asks worker 0 first, for what was batch P: so worker k makes
    worker (k + P) % W's part and passes over its batches before P. Shard
    sampling, splitting and the epoch share all take the worker from here; it is
    set in each worker at the start of each epoch (`ImageTextPipeline.iterator1`).
    """

    def __init__(self) -> None:
        self.resume_batches = 0
        self.rank, self.world_size, self.worker, self.num_workers = 0, 1, 0, 1
        self.done: range = range(0)

    def start_epoch(self) -> None:
        self.rank, self.world_size, worker, num_workers = pytorch_worker_info()
        self.num_workers = max(num_workers, 1)
        self.worker = (worker + self.resume_batches) % self.num_workers
        self.done = range(self.worker, self.resume_batches, self.num_workers)
        self.resume_batches = 0

    def seed(self) -> int:
        """webdataset's per-worker seed (pytorch_worker_seed), for the worker whose part this process makes."""
        return self.rank * 1000 + self.worker


class _SplitByWorker(PipelineStage):
    """webdataset's split_by_worker, for the worker the epoch plan says."""

    def __init__(self, plan: _EpochPlan) -> None:
        self.plan = plan

    def run(self, src: Iterable) -> Iterator:
        return itertools.islice(src, self.plan.worker, None, self.plan.num_workers)


class _ToImageText(PipelineStage):
    """Raw tar sample -> (image tensor, caption or embedding, skips since the previous sample).

    With samples_per_epoch it also ends the worker's epoch after its share; in a
    resumed epoch it first passes over the samples of the batches already trained on.
    """

    def __init__(self, stats: SkipStats, image_transform: Callable, text_embedding_key: str | None,
                 plan: _EpochPlan, batch_size: int, samples_per_epoch: int | None) -> None:
        self.stats = stats
        self.image_transform = image_transform
        self.text_embedding_key = text_embedding_key
        self.plan = plan
        self.batch_size = batch_size
        self.samples_per_epoch = samples_per_epoch
        self.embedding_dim: int | None = None
        self.npy = NpyReader()

    def run(self, src: Iterable[dict[str, Any]]) -> Iterator[tuple[torch.Tensor, Any, torch.Tensor]]:
        plan = self.plan
        if self.samples_per_epoch is None:
            return self._samples(src, skip=self.batch_size * len(plan.done))
        share = epoch_share(self.samples_per_epoch, self.batch_size, plan.world_size, plan.num_workers, plan.worker)
        sizes = batch_sizes(self.samples_per_epoch, self.batch_size, plan.world_size)
        skip = sum(sizes[j] for j in plan.done if j < len(sizes))
        return itertools.islice(self._samples(src, skip), share - skip)

    def _samples(self, src: Iterable[dict[str, Any]], skip: int) -> Iterator[tuple[torch.Tensor, Any, torch.Tensor]]:
        """The converted samples after `skip` usable ones (skipped unconverted; skips among them were counted before)."""
        src = iter(src)
        while skip > 0:
            sample = next(src, None)
            if sample is None:
                return
            skip -= self._looks_usable(sample)
        yield from self._convert(src)

    def _looks_usable(self, sample: dict[str, Any]) -> bool:
        """What _convert would accept, judged from the caption and the image header (no decoding, no counting)."""
        key = next((k for k in IMAGE_KEYS if k in sample), None)
        if key is None:
            return False
        try:
            self._text(sample)
            with Image.open(io.BytesIO(sample[key])):
                return True
        except (_Skip, OSError, ValueError, Image.DecompressionBombError):
            return False

    def _convert(self, src: Iterable[dict[str, Any]]) -> Iterator[tuple[torch.Tensor, Any, torch.Tensor]]:
        reported, reported_total = self.stats.vector(), self.stats.total
        for sample in src:
            try:
                text = self._text(sample)
                image = self._image(sample)
            except _Skip as skip:
                self.stats.add(skip.reason, f"sample {sample.get('__key__')!r} of {sample.get('__url__')}: {skip}")
                continue
            self.stats.passed()
            if self.stats.total == reported_total:
                yield image, text, _NO_SKIPS
                continue
            now = self.stats.vector()
            yield image, text, now - reported
            reported, reported_total = now, self.stats.total

    def _image(self, sample: dict[str, Any]) -> torch.Tensor:
        key = next((k for k in IMAGE_KEYS if k in sample), None)
        if key is None:
            raise _Skip("missing_image", f"no {' / '.join(IMAGE_KEYS)} entry (keys: {sorted(sample)})")
        try:
            return self.image_transform(load_rgb(io.BytesIO(sample[key])))
        except Exception as exn:
            raise _Skip("bad_image", f"{key}: {exn!r}") from exn

    def _text(self, sample: dict[str, Any]) -> str | torch.Tensor:
        if self.text_embedding_key is None:
            caption = sample.get(CAPTION_KEY, b"").decode("utf-8", errors="replace").strip()
            if not caption:
                raise _Skip("missing_caption", f"{CAPTION_KEY!r} missing or blank")
            return caption
        if self.text_embedding_key not in sample:
            raise _Skip("missing_embedding", f"no {self.text_embedding_key!r} entry (keys: {sorted(sample)})")
        try:
            embedding = self.npy.load(sample[self.text_embedding_key])
        except Exception as exn:
            raise _Skip("bad_embedding", f"{self.text_embedding_key}: {exn!r}") from exn
        if embedding.ndim != 1 or not np.issubdtype(embedding.dtype, np.floating):
            raise _Skip("bad_embedding", f"expected a 1-D float vector, got {embedding.dtype} {embedding.shape}")
        if self.embedding_dim is None:
            self.embedding_dim = embedding.shape[0]
        if embedding.shape[0] != self.embedding_dim:
            raise _Skip("bad_embedding", f"dimension {embedding.shape[0]}, earlier samples had {self.embedding_dim}")
        return torch.from_numpy(embedding.astype(np.float32))


def _collate(samples: Sequence[tuple], tokenize: Callable | None) -> ImageTextBatch:
    images, texts, skipped = zip(*samples)
    text_tensor = torch.stack(texts) if tokenize is None else tokenize(list(texts))
    return ImageTextBatch(torch.stack(images), text_tensor, torch.stack(skipped).sum(0))


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


class ImageTextPipeline(wds.DataPipeline):
    """A DataPipeline of ImageTextBatch that also carries what its loader needs to know."""

    def __init__(self, *stages: Any, plan: _EpochPlan, skip_stats: SkipStats, batch_size: int,
                 samples_per_epoch: int | None, num_shards: int) -> None:
        super().__init__(*stages)
        self.plan = plan
        self.skip_stats = skip_stats
        self.batch_size = batch_size
        self.samples_per_epoch = samples_per_epoch
        self.num_shards = num_shards

    def resume(self, epoch: int, batches: int) -> None:
        """Make the next iteration epoch `epoch` (same shards and shuffles), minus its first `batches` batches.

        Call before the loader starts its workers: they take a copy of the pipeline.
        The shard sampler and the shuffles count epochs up from -1 at each iteration.
        """
        for stage in self.pipeline:
            if isinstance(stage, (wds.ResampledShards, wds.detshuffle)):
                stage.epoch = epoch - 1
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
    samples_per_epoch (global, over all ranks). shuffle_buffer=0 keeps the shard
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
    if resampled and (samples_per_epoch is None or samples_per_epoch < 1):
        raise ValueError(f"resampled=True needs samples_per_epoch >= 1 (an epoch never ends otherwise), got {samples_per_epoch}")
    if not resampled and samples_per_epoch is not None:
        raise ValueError("samples_per_epoch applies to resampled=True only; without resampling an epoch is one pass over the shards")
    shard_urls = expand_shard_urls(urls)
    stats = SkipStats()
    plan = _EpochPlan()
    if resampled:
        shards: list[Any] = [wds.ResampledShards(shard_urls, seed=seed, worker_seed=plan.seed, deterministic=True)]
    else:
        shards = [
            wds.SimpleShardList(shard_urls),
            wds.detshuffle(len(shard_urls), seed=seed) if shuffle_buffer else None,
            wds.split_by_node,
            _SplitByWorker(plan),
        ]
    return ImageTextPipeline(
        *shards,
        wds.tarfile_to_samples(handler=stats.shard_error),
        wds.detshuffle(shuffle_buffer, seed=seed) if shuffle_buffer else None,
        _ToImageText(stats, image_transform, text_embedding_key, plan, batch_size, samples_per_epoch if resampled else None),
        wds.batched(batch_size, collation_fn=functools.partial(_collate, tokenize=tokenize), partial=True),
        plan=plan,
        skip_stats=stats,
        batch_size=batch_size,
        samples_per_epoch=samples_per_epoch,
        num_shards=len(shard_urls),
    )


def _pin_rank(rank: int, world_size: int, worker_id: int) -> None:
    """Give workers the parent's rank through the env vars webdataset reads first.

    Forked workers inherit torch.distributed's state, spawned ones do not; without
    this, a spawned worker would read every shard as if it were rank 0 of 1.
    """
    os.environ["RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world_size)


class ResumableLoader(wds.WebLoader):
    """A WebLoader whose place in training Lightning checkpoints and restores (its `_Stateful` protocol).

    `position` says how far training got: (epoch, batches of it trained on this
    rank). The loader cannot tell by itself: Lightning fetches batches ahead of
    the step that trains on them. Lightning saves rank 0's position (every rank
    has the same batch count), and hands it back before the loader's first epoch.
    """

    def __init__(self, pipeline: ImageTextPipeline, **kwargs: Any) -> None:
        super().__init__(pipeline, **kwargs)
        self.image_text_pipeline = pipeline
        self.position: Callable[[], tuple[int, int]] | None = None

    def state_dict(self) -> dict[str, int]:
        if self.position is None:
            return {}
        epoch, batches = self.position()
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state:
            self.image_text_pipeline.resume(state["epoch"], state["batches"])


def image_text_loader(pipeline: ImageTextPipeline, num_workers: int, *, pin_memory: bool = False) -> ResumableLoader:
    """A DataLoader over a pipeline that batches in its workers.

    Rank and world size come from RANK / WORLD_SIZE when both are set (torchrun,
    SLURM), else from torch.distributed once initialised (Lightning DDP), read
    here in the parent. A resampled loader has a length: the batches every rank yields.
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
    )
    if pipeline.samples_per_epoch is not None:
        return loader.with_length(batches_per_rank(pipeline.samples_per_epoch, pipeline.batch_size, world_size), silent=True)
    streams = world_size * max(num_workers, 1)
    if pipeline.num_shards < streams:
        log.warning("%d shards for %d ranks x workers: some workers get no data", pipeline.num_shards, streams)
    if world_size > 1:
        log.warning("without resampling, %d ranks can get different numbers of batches; use resampled=True under DDP", world_size)
    return loader
