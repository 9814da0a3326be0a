"""Reading images the same way everywhere: any mode to 8-bit RGB, decompression bombs refused."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cir.data.errors import UnreadableImage


def load_rgb(path: Path) -> Image.Image:
    """Open any image mode (CMYK, 16-bit, grayscale, palette, RGBA) as 8-bit RGB.

    Transparency is composited on white, 16-bit and 32-bit integer images are
    scaled (not clipped) to 8 bits, and an image past PIL's decompression-bomb
    limit is refused instead of filling memory. A file that does not decode
    (truncated, not an image, a bomb) raises UnreadableImage naming it.
    """
    try:
        return _load_rgb(path)
    except FileNotFoundError:
        raise
    except (OSError, Image.DecompressionBombError, Image.DecompressionBombWarning, SyntaxError, ValueError) as err:
        name = path if isinstance(path, (str, Path)) else "image bytes"
        raise UnreadableImage(f"{name}: cannot read the image ({type(err).__name__}: {err})") from err


def _load_rgb(path: Path) -> Image.Image:
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
