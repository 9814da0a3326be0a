"""The one in-memory form every CIR benchmark loader produces.

Evaluation, submission and supervised training read only these types, so CIRR,
CIRCO, FashionIQ and the generated benchmark go through exactly the same code.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset


@dataclass(frozen=True)
class CIRQuery:
    """One query: a reference image id plus a relative caption.

    `targets` holds every ground truth (one for CIRR / FashionIQ, several for
    CIRCO) and is empty where the split hides them (test). `subset` holds the
    CIRR img_set members (empty elsewhere). `target` is the main target
    (CIRR target_hard, CIRCO target_img_id), None on test.
    """

    query_id: str
    reference: str
    caption: str
    targets: tuple[str, ...] = ()
    subset: tuple[str, ...] = ()
    target: str | None = None


@dataclass
class CIRBenchmark:
    """One dataset split: its queries, its gallery (every image of the split) and where images live."""

    name: str
    split: str
    queries: list[CIRQuery]
    gallery: list[str]
    image_paths: dict[str, Path] = field(repr=False, default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)

    def image_path(self, image_id: str) -> Path:
        try:
            return self.image_paths[image_id]
        except KeyError:
            raise KeyError(f"{self.name}/{self.split}: no image path known for id {image_id!r}") from None

    @property
    def has_targets(self) -> bool:
        return any(q.targets for q in self.queries)


def load_rgb(path: Path) -> Image.Image:
    """Open any image mode (CMYK, 16-bit, grayscale, palette, RGBA) as 8-bit RGB.

    Transparency is composited on white, 16-bit and 32-bit integer images are
    scaled (not clipped) to 8 bits, and an image past PIL's decompression-bomb
    limit is refused (DecompressionBombError) instead of filling memory.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
                depth = 65535 if img.mode.startswith("I;16") else max(int(np.asarray(img).max()), 1)
                scaled = np.asarray(img, dtype=np.float64) * (255.0 / depth)
                return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8)).convert("RGB")
            if img.mode in ("RGBA", "LA", "P", "PA") or "transparency" in img.info:
                img = img.convert("RGBA")
                background = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, img)
            return img.convert("RGB")


class ImageDataset(Dataset):
    """Images by id, returning (row index, tensor): the index lets DDP gathers put rows back in order."""

    def __init__(self, ids: list[str], paths: list[Path], transform) -> None:
        if len(ids) != len(paths):
            raise ValueError("ids and paths differ in length")
        self.ids = ids
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        return index, self.transform(load_rgb(self.paths[index]))
