"""Supervised CIR training data: (reference image, relative caption, target image) triplets of a benchmark split.

Any benchmark `load_benchmarks` reads (CIRR, FashionIQ, the generated CIRR-layout
benchmark) becomes a flat list of triplets; every image the triplets need is
checked up front, so a missing file fails before the model is built, by name.

Every random draw is a function of (seed, epoch, triplet): the epoch's order comes from a sampler seeded by
(seed, epoch), and each triplet's crops from a generator seeded by (seed, epoch, index) (cir.data.sample_rng),
so neither what ran before nor the number of workers changes them, and a run resumed mid-epoch (its position
carried by the DataModule: cir.data.training_position) trains on the batches the uninterrupted run would have.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import lightning as L
import torch
from torch.utils.data import Dataset, DistributedSampler

from cir.data.images import load_rgb
from cir.data.retrieval_benchmarks import load_benchmarks
from cir.data.retrieval_benchmarks.benchmark import CIRBenchmark
from cir.data.sample_rng import sample_seed, seeded
from cir.data.training_position import PositionedLoader, TrainingPosition
from cir.data.transforms import NormaliseOnDevice
from cir.data.validation import ZeroShotValidationData

_SHOWN_MISSING = 5


@dataclass(frozen=True)
class Triplet:
    query_id: str
    reference: Path
    caption: str
    target: Path


def benchmark_triplets(bench: CIRBenchmark) -> list[Triplet]:
    """Every query of a labelled split; where a query has several ground truths, its main target."""
    triplets: list[Triplet] = []
    for query in bench.queries:
        target = query.target or (query.targets[0] if query.targets else None)
        if target is None:
            raise ValueError(
                f"{bench.name}/{bench.split}: query {query.query_id} has no target image; "
                "supervised training needs a labelled split (train or val)"
            )
        triplets.append(Triplet(query.query_id, bench.image_path(query.reference), query.caption, bench.image_path(target)))
    return triplets


def missing_files(triplets: Sequence[Triplet]) -> list[Path]:
    """Reference and target files that are not there (each distinct path once, in first-use order)."""
    paths = dict.fromkeys(path for t in triplets for path in (t.reference, t.target))
    return [path for path in paths if not path.is_file()]


def load_triplets(
    name: str,
    root: str | Path,
    split: str,
    *,
    image_root: str | Path | None = None,
    categories: Sequence[str] | None = None,
    caption_mode: str = "relative",
) -> list[Triplet]:
    """A benchmark split (FashionIQ: the chosen categories together) as triplets whose image files all exist."""
    options = {
        "cirr": {"image_root": image_root},
        "circo": {"caption_mode": caption_mode},
        "fashioniq": {"categories": list(categories)} if categories is not None else {},
    }.get(name, {})
    benches = load_benchmarks(name, root, split, **options)
    triplets = [t for bench in benches for t in benchmark_triplets(bench)]
    if not triplets:
        raise ValueError(f"{name}/{split} under {root}: the split has no queries to train on")
    missing = missing_files(triplets)
    if missing:
        shown = ", ".join(str(p) for p in missing[:_SHOWN_MISSING])
        more = f" and {len(missing) - _SHOWN_MISSING} more" if len(missing) > _SHOWN_MISSING else ""
        raise FileNotFoundError(f"{name}/{split} under {root}: {len(missing)} image file(s) missing: {shown}{more}")
    return triplets


class Draw(NamedTuple):
    """A triplet's index in the split and the seed its random crops draw from."""

    index: int
    seed: int


class TripletDataset(Dataset):
    """(reference image, caption tokens, target image); tokenised in the loader workers.

    An item asked for by a Draw (as EpochSampler yields them) crops under that draw's seed; by a plain index,
    from the generators as they stand.
    """

    def __init__(
        self, triplets: Sequence[Triplet], image_transform: Callable, tokenize: Callable[[list[str]], torch.Tensor]
    ) -> None:
        self.triplets = list(triplets)
        self.image_transform = image_transform
        self.tokenize = tokenize

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, item: int | Draw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not isinstance(item, Draw):
            return self._make(self.triplets[item])
        with seeded(item.seed, python=getattr(self.image_transform, "draws_from_python", True)):
            return self._make(self.triplets[item.index])

    def _make(self, t: Triplet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        reference = self.image_transform(load_rgb(t.reference))
        target = self.image_transform(load_rgb(t.target))
        return reference, self.tokenize([t.caption])[0], target


class EpochSampler(DistributedSampler):
    """This rank's share of the split in an order drawn from (seed, epoch), each index with its triplet's seed.

    DistributedSampler's order is a function of (seed, epoch) and Lightning sets the epoch; under DDP Lightning
    keeps a DistributedSampler it is given. A triplet's seed hashes (seed, epoch, index): its index names it on
    every rank. `resume` starts an epoch after the batches already trained.
    """

    def __init__(self, dataset: TripletDataset, *, num_replicas: int, rank: int, seed: int, batch_size: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size = batch_size
        self.resume_epoch, self.resume_batches = -1, 0

    def resume(self, epoch: int, batches: int) -> None:
        """Make the next iteration epoch `epoch`, minus its first `batches` batches."""
        self.set_epoch(epoch)
        self.resume_epoch, self.resume_batches = epoch, batches

    def __iter__(self) -> Iterator[Draw]:
        skip = self.resume_batches * self.batch_size if self.epoch == self.resume_epoch else 0
        for index in itertools.islice(super().__iter__(), skip, None):
            yield Draw(index, sample_seed(self.seed, self.epoch, 0, 0, index))


class TripletDataModule(TrainingPosition, NormaliseOnDevice, ZeroShotValidationData, L.LightningDataModule):
    """Shuffled full batches from EpochSampler; drop_last keeps DDP ranks in step.

    Validation loaders are the periodic zero-shot evaluator's (ZeroShotValidationData); the checkpoint
    state is the position in training (TrainingPosition), which the next train_dataloader starts from.
    """

    def __init__(self, dataset: TripletDataset, batch_size: int, num_workers: int, seed: int = 0) -> None:
        super().__init__()
        if batch_size <= 0 or num_workers < 0:
            raise ValueError(f"batch_size must be positive and num_workers 0 or more, got {batch_size}, {num_workers}")
        self.dataset = dataset
        self.image_transform = dataset.image_transform
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.resume_at: dict[str, int] = {}

    def train_dataloader(self) -> PositionedLoader:
        world = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        if len(self.dataset) < self.batch_size * world:
            raise ValueError(
                f"{len(self.dataset)} training triplets fill no batch of {self.batch_size} per device on {world} device(s): "
                "lower data.batch_size or use a larger split"
            )
        sampler = EpochSampler(self.dataset, num_replicas=world, rank=rank, seed=self.seed, batch_size=self.batch_size)
        if self.resume_at:
            sampler.resume(self.resume_at["epoch"], self.resume_at["batches"])
        pin = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return PositionedLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=pin,
            # Its own generator for the workers' base seed: else iter() draws it from the training process's
            # global generator, shifting the model's dropout masks by whether the run was resumed.
            generator=torch.Generator(),
        )
