"""The modality gap TAT is meant to close, measured on matching image-text pairs.

`gap_sums` holds the parts that add up over batches and ranks, so a gap over
more pairs than one process holds is `gap_from_sums` of the summed parts;
`ModalityGap` is the torchmetrics class over those sums (DDP sync by "sum").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric


def gap_sums(image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums of the L2-normalised image and text rows, of the pair cosines, and the pair count (may be 0 pairs)."""
    if image.shape != text.shape or image.ndim != 2:
        raise ValueError(f"expected two N x D tensors of the same shape, got {tuple(image.shape)} and {tuple(text.shape)}")
    image = F.normalize(image.float(), dim=-1)
    text = F.normalize(text.float(), dim=-1)
    return {
        "image": image.sum(0),
        "text": text.sum(0),
        "cosine": (image * text).sum(),
        "count": torch.tensor(image.shape[0], device=image.device),
    }


def gap_from_sums(sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`modality_gap` from `gap_sums` added up over any split of the pairs (at least one pair in all; no check
    here, since a check would cost training a device sync every step)."""
    count = sums["count"]
    return {
        "gap": ((sums["image"] - sums["text"]) / count).norm(),
        "pair_cosine": sums["cosine"] / count,
    }


def modality_gap(image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
    """Distance between the mean image and mean text embedding, and the mean cosine of matching pairs.

    Rows of `image` and `text` are matching pairs; both are L2-normalised here.
    """
    if image.shape != text.shape or image.ndim != 2 or image.shape[0] == 0:
        raise ValueError(f"expected two non-empty N x D tensors of the same shape, got {tuple(image.shape)} and {tuple(text.shape)}")
    return gap_from_sums(gap_sums(image, text))


class ModalityGap(Metric):
    """`modality_gap` over pairs given in batches, on any number of ranks: the states are `gap_sums`'s, summed."""

    full_state_update = False

    def __init__(self, dim: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("image", default=torch.zeros(dim), dist_reduce_fx="sum")
        self.add_state("text", default=torch.zeros(dim), dist_reduce_fx="sum")
        self.add_state("cosine", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, image: torch.Tensor, text: torch.Tensor) -> None:
        sums = gap_sums(image, text)
        self.image += sums["image"]
        self.text += sums["text"]
        self.cosine += sums["cosine"]
        self.count += sums["count"]

    def compute(self) -> dict[str, torch.Tensor]:
        if int(self.count) == 0:
            raise ValueError("the modality gap needs at least one image-caption pair, got none")
        return gap_from_sums({"image": self.image, "text": self.text, "cosine": self.cosine, "count": self.count})
