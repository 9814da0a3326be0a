"""Galleries without a model: random unit features over a small benchmark whose images exist on disk."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cir.browse.session import Gallery
from cir.data.retrieval_benchmarks.benchmark import CIRBenchmark, CIRQuery
from cir.evaluation.features import EvalIndex, Features


def make_gallery(tmp_path: Path, name: str = "cirr", images: int = 30, queries: int = 12, seed: int = 0,
                 targets_per_query: int = 1, label: str = "A") -> Gallery:
    """`name` picks the protocol (cirr: reference excluded, img_set subsets; circo: several targets)."""
    generator = torch.Generator().manual_seed(seed)
    ids = [f"img{i:03d}" for i in range(images)]
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    for i, image_id in enumerate(ids):
        path = folder / f"{image_id}.png"
        if not path.exists():
            Image.new("RGB", (8, 8), (i * 8 % 256, 100, 200)).save(path)
    rows = []
    for q in range(queries):
        picks = torch.randperm(images, generator=generator)[: 1 + targets_per_query + 3].tolist()
        reference, targets = ids[picks[0]], tuple(ids[p] for p in picks[1 : 1 + targets_per_query])
        subset = tuple(ids[p] for p in picks) if name == "cirr" else ()
        rows.append(CIRQuery(str(q), reference, f"caption {q} {'red' if q % 2 else 'blue'}", targets, subset, targets[0]))
    bench = CIRBenchmark(name, "val", rows, ids, {i: folder / f"{i}.png" for i in ids})
    index = EvalIndex.build(bench)
    feats = Features(F.normalize(torch.randn(len(index.image_ids), 16, generator=generator), dim=-1),
                     F.normalize(torch.randn(len(index.texts), 16, generator=generator), dim=-1))
    return Gallery(label, bench, index, feats)


@pytest.fixture
def gallery_factory(tmp_path: Path):
    return functools.partial(make_gallery, tmp_path)


@pytest.fixture
def cirr_gallery(tmp_path: Path) -> Gallery:
    return make_gallery(tmp_path)


@pytest.fixture
def circo_gallery(tmp_path: Path) -> Gallery:
    return make_gallery(tmp_path, name="circo", targets_per_query=3)
