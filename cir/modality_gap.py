"""The modality gap TAT is meant to close, measured on matching image-text pairs."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def modality_gap(image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
    """Distance between the mean image and mean text embedding, and the mean cosine of matching pairs.

    Rows of `image` and `text` are matching pairs; both are L2-normalised here.
    """
    if image.shape != text.shape or image.ndim != 2 or image.shape[0] == 0:
        raise ValueError(f"expected two non-empty N x D tensors of the same shape, got {tuple(image.shape)} and {tuple(text.shape)}")
    image = F.normalize(image.float(), dim=-1)
    text = F.normalize(text.float(), dim=-1)
    return {
        "gap": (image.mean(0) - text.mean(0)).norm(),
        "pair_cosine": (image * text).sum(-1).mean(),
    }
