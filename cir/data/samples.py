"""One image-caption sample from a tar entry to tensors, with bad samples skipped and counted, never fatal.

A sample is skipped (and counted per reason in `SkipStats`, and per batch in
`ImageTextBatch.skipped`, since DataLoader workers keep their own stats) when its
image or caption is missing or does not decode; a long run of skips stops the
run, since then the data as a whole is broken.
"""

from __future__ import annotations

import io
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from webdataset.utils import PipelineStage

from cir.data.epochs import EpochPlan, batch_sizes, epoch_share
from cir.data.errors import DataError
from cir.data.images import load_rgb
from cir.data.sample_rng import sample_seed, seeded
from cir.data.shared_batch import batch_buffer, leased, pooled, release
from cir.data.transforms import (
    PIL_DECODES,
    PIL_FORMATS,
    pil_decode_counts,
    stack_images,
)

log = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
CAPTION_KEY = "txt"
SKIP_REASONS = ("shard_error", "missing_image", "bad_image", "missing_caption", "missing_embedding", "bad_embedding")
MAX_CONSECUTIVE_SKIPS = 10_000
_WARNINGS_PER_REASON = 10
# What a sample yields when nothing was skipped or decoded through PIL since the previous one (shared, never modified).
_NO_COUNTS = torch.zeros(len(SKIP_REASONS) + len(PIL_FORMATS), dtype=torch.long)


class ImageTextBatch(NamedTuple):
    """One training batch.

    `texts` is LongTensor[B, L] tokens, or FloatTensor[B, D] cached caption
    embeddings when the pipeline reads a text embedding key. `skipped` is
    LongTensor[len(SKIP_REASONS)]: what the worker that made this batch skipped
    since its previous batch (summed over batches and ranks it gives the global
    count; skips after a worker's last sample of a non-resampled epoch are only
    in that worker's SkipStats and log). `pil_decoded` is LongTensor[len(PIL_FORMATS)]: the batch's images that
    decoded through PIL instead of TorchCodec, per format (cir.data.transforms.PIL_DECODES of the worker that made it).
    """

    images: torch.Tensor
    texts: torch.Tensor
    skipped: torch.Tensor
    pil_decoded: torch.Tensor | None = None

    def __reduce__(self) -> tuple:
        """Images in a worker's pooled segment (cir.data.shared_batch) travel with a mark, so that the main process
        hands the segment back once done with them, and the rest of the batch inline: one file descriptor per
        batch instead of a fresh shared-memory segment, sent through a connection of its own, for every tensor."""
        if not (isinstance(self.images, torch.Tensor) and pooled(self.images)):
            return _rebuild_batch, (*self, False)
        small = tuple(None if t is None else t.numpy() for t in self[1:])
        return _rebuild_batch, (self.images, *small, True)


def _rebuild_batch(images: Any, texts: Any, skipped: Any, pil_decoded: Any, is_pooled: bool) -> ImageTextBatch:
    if not is_pooled:
        return ImageTextBatch(images, texts, skipped, pil_decoded)
    texts, skipped, pil_decoded = (None if a is None else torch.from_numpy(a) for a in (texts, skipped, pil_decoded))
    return ImageTextBatch(leased(images), texts, skipped, pil_decoded)


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
            raise DataError(
                f"{self.consecutive} consecutive samples or shards were skipped "
                f"({', '.join(f'{r} {n}' for r, n in self.counts.items() if n)}; see the warnings above): "
                "no usable sample in the training data (data.train_shards, its keys or the image transform)"
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


class ToImageText(PipelineStage):
    """Raw tar sample -> (image tensor, caption or embedding, skips since the previous sample).

    With samples_per_epoch it also ends the worker's epoch after its share; in a
    resumed epoch it first passes over the samples of the batches already trained on.
    The image transform's random draws are seeded per sample (cir.data.sample_rng) by
    (seed, epoch, rank, worker part, the sample's place in that part's stream), so a
    resumed run, any worker count's process or a pass-over draws what the first run drew.
    """

    def __init__(self, stats: SkipStats, image_transform: Callable, text_embedding_key: str | None,
                 plan: EpochPlan, batch_size: int, samples_per_epoch: int | None, seed: int = 0) -> None:
        self.stats = stats
        self.seed = seed
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
        """The converted samples after `skip` usable ones (passed over uncounted: skips among them were counted before)."""
        places = enumerate(src)  # a raw sample's place in this part's stream seeds its random draws
        while skip > 0:
            placed = next(places, None)
            if placed is None:
                return
            skip -= self._usable(*placed)
        yield from self._convert(places)

    def _usable(self, place: int, sample: dict[str, Any]) -> bool:
        """Whether _convert accepts the sample, by the same decoding and checks (nothing counted).

        Judging by less (the image header, say) would pass a truncated JPEG that
        training skipped, and shift every later batch of a resumed run by one.
        """
        try:
            self._text(sample)
            self._image(place, sample)
        except _Skip:
            return False
        return True

    def _convert(self, places: Iterable[tuple[int, dict[str, Any]]]) -> Iterator[tuple[torch.Tensor, Any, torch.Tensor]]:
        """Samples with what was skipped and decoded through PIL since the previous one (a pass-over's decodes left out)."""
        reported, reported_total = self._counts(), self.stats.total + PIL_DECODES.total()
        batch = _BatchInPlace(self.image_transform, self.batch_size)
        try:
            for place, sample in places:
                try:
                    text = self._text(sample)
                    image = self._image(place, sample, batch.place())
                except _Skip as skip:
                    self.stats.add(skip.reason, f"sample {sample.get('__key__')!r} of {sample.get('__url__')}: {skip}")
                    continue
                self.stats.passed()
                batch.taken()
                total = self.stats.total + PIL_DECODES.total()
                if total == reported_total:
                    yield image, text, _NO_COUNTS
                    continue
                now = self._counts()
                yield image, text, now - reported
                reported, reported_total = now, total
        finally:
            batch.close()

    def _counts(self) -> torch.Tensor:
        return torch.cat([self.stats.vector(), pil_decode_counts()])

    def _image(self, place: int, sample: dict[str, Any], out: torch.Tensor | None = None) -> torch.Tensor:
        key = next((k for k in IMAGE_KEYS if k in sample), None)
        if key is None:
            raise _Skip("missing_image", f"no {' / '.join(IMAGE_KEYS)} entry (keys: {sorted(sample)})")
        plan, transform = self.plan, self.image_transform
        try:
            with seeded(sample_seed(self.seed, plan.epoch, plan.rank, plan.worker, place),
                        python=getattr(transform, "draws_from_python", True)):
                if out is not None:
                    return transform(sample[key], out)
                if getattr(transform, "takes_encoded", False):
                    return transform(sample[key])
                return transform(load_rgb(io.BytesIO(sample[key])))
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


class _BatchInPlace:
    """Where a DataLoader worker resizes its next image: in place in the batch it will be part of, a pooled
    shared-memory segment (cir.data.shared_batch), so that collating it copies nothing. The n-th image this stage
    yields in an epoch is item n % batch_size of its batch, as the batching stage right after it groups them; the
    decision to use a segment is made once per batch (no segment free and the pool full: images of their own)."""

    def __init__(self, transform: Callable, batch_size: int) -> None:
        fills = getattr(transform, "fills_out", False)
        self.shape = (batch_size, *transform.size, 3) if fills else None  # channels-last uint8, as transform makes
        self.batch_size = batch_size
        self.buffer: torch.Tensor | None = None
        self.decided = False
        self.filled = 0

    def place(self) -> torch.Tensor | None:
        """The (3, H, W) view the next image goes into, or None (the image is made on its own)."""
        if self.shape is None:
            return None
        if not self.decided:
            self.buffer, self.decided = batch_buffer(self.shape, torch.uint8), True
        return None if self.buffer is None else self.buffer[self.filled].permute(2, 0, 1)

    def taken(self) -> None:
        """The image made at `place` was yielded."""
        self.filled += 1
        if self.filled == self.batch_size:
            self.buffer, self.decided, self.filled = None, False, 0

    def close(self) -> None:
        """The stream ended: a segment none of whose items was yielded goes back to the pool."""
        if self.buffer is not None and self.filled == 0:
            release(self.buffer)


def collate(samples: Sequence[tuple], tokenize: Callable | None) -> ImageTextBatch:
    images, texts, counts = zip(*samples)
    text_tensor = torch.stack(texts) if tokenize is None else tokenize(list(texts))
    total = torch.stack(counts).sum(0)
    return ImageTextBatch(stack_images(images, pooled=True), text_tensor, total[: len(SKIP_REASONS)], total[len(SKIP_REASONS) :])
