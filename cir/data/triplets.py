"""Supervised CIR training data: (reference image, relative caption, target image) triplets of a benchmark split.

Any benchmark `load_benchmarks` reads (CIRR, FashionIQ, the generated CIRR-layout
benchmark) becomes a flat list of triplets; every image the triplets need is
checked up front, so a missing file fails before the model is built, by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from cir.data.images import load_rgb
from cir.data.retrieval_benchmarks import load_benchmarks
from cir.data.retrieval_benchmarks.benchmark import CIRBenchmark
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


class TripletDataset(Dataset):
    """(reference image, caption tokens, target image); tokenised in the loader workers."""

    def __init__(
        self, triplets: Sequence[Triplet], image_transform: Callable, tokenize: Callable[[list[str]], torch.Tensor]
    ) -> None:
        self.triplets = list(triplets)
        self.image_transform = image_transform
        self.tokenize = tokenize

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = self.triplets[index]
        reference = self.image_transform(load_rgb(t.reference))
        target = self.image_transform(load_rgb(t.target))
        return reference, self.tokenize([t.caption])[0], target


class TripletDataModule(NormaliseOnDevice, ZeroShotValidationData, L.LightningDataModule):
    """Shuffled full batches: under DDP Lightning swaps in its DistributedSampler, and drop_last keeps ranks in step.

    Validation loaders are the periodic zero-shot evaluator's (ZeroShotValidationData).
    """

    def __init__(self, dataset: TripletDataset, batch_size: int, num_workers: int) -> None:
        super().__init__()
        if batch_size <= 0 or num_workers < 0:
            raise ValueError(f"batch_size must be positive and num_workers 0 or more, got {batch_size}, {num_workers}")
        self.dataset = dataset
        self.image_transform = dataset.image_transform
        self.batch_size = batch_size
        self.num_workers = num_workers

    def train_dataloader(self) -> DataLoader:
        world = self.trainer.world_size if self.trainer is not None else 1
        if len(self.dataset) < self.batch_size * world:
            raise ValueError(
                f"{len(self.dataset)} training triplets fill no batch of {self.batch_size} per device on {world} device(s): "
                "lower data.batch_size or use a larger split"
            )
        pin = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=pin,
        )
