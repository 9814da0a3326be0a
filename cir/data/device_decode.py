"""`data.decode=cuda`: the workers hand over JPEG bytes and crop boxes, the GPU decodes, crops and resizes the batch.

At 40 % MFU an H100 trains ViT-B/32 TAT at about 15,000 samples/s, some 40 cores of the
CPU loader. With decode="cuda" a worker reads each RGB JPEG's header only (PIL: size,
mode, the decompression-bomb limit), draws the crop box from that size exactly as the
CPU path draws it (Uint8RandomResizedCrop.crop_box, seeded per sample by
cir.data.sample_rng: the same seed gives the same crops on either path), and ships the
bytes; the batch is decoded in one nvJPEG call (TorchCodec) on the training device,
cropped and resized there. Images TorchCodec does not decode here (PNG, WebP,
grayscale or CMYK JPEG) are decoded, cropped and resized in the worker as on the CPU
path and travel as pixels. A JPEG that nvJPEG refuses fails the batch, not one sample:
the CPU path is the one that skips and counts undecodable images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import torch
from torchcodec.decoders import decode_jpeg


class Resizer(Protocol):
    """What the batch decode needs of the training transform (cir.data.transforms.Uint8RandomResizedCrop)."""

    size: tuple[int, int]

    def resize(self, crop: torch.Tensor) -> torch.Tensor: ...


class EncodedCrop(NamedTuple):
    """One sample for the device: the JPEG bytes (uint8 [N]) and its crop box (long [4]: top, left, height, width)."""

    data: torch.Tensor
    box: torch.Tensor


class EncodedBatch(NamedTuple):
    """A batch for the device: JPEGs end to end with their boxes and batch positions, and pixels made in the worker."""

    data: torch.Tensor  # uint8 [total bytes]
    ends: torch.Tensor  # long [J]: where each JPEG ends in data
    boxes: torch.Tensor  # long [J, 4]
    at: torch.Tensor  # long [J]: each JPEG's position in the batch
    pixels: torch.Tensor  # uint8 [K, 3, h, w]: the other images, already cropped and resized
    pixels_at: torch.Tensor  # long [K]

    def decode(self, crop: Resizer, device: torch.device | str) -> torch.Tensor:
        """uint8 [B, 3, *crop.size] on `device`: the JPEGs decoded there (one batched call), cropped and resized."""
        out = torch.empty((len(self.at) + len(self.pixels_at), 3, *crop.size), dtype=torch.uint8, device=device)
        jpegs = list(torch.tensor_split(self.data, self.ends[:-1].tolist())) if len(self.ends) else []
        decoded = decode_jpeg(jpegs, device=device) if jpegs else []
        for position, image, (top, left, height, width) in zip(self.at.tolist(), decoded, self.boxes.tolist()):
            out[position] = crop.resize(image[:, top : top + height, left : left + width])
        if len(self.pixels_at):
            out[self.pixels_at.to(device)] = self.pixels.to(device)
        return out


def stack_encoded(items: Sequence[EncodedCrop | torch.Tensor]) -> EncodedBatch:
    """A batch's EncodedCrops and worker-made uint8 images (3, h, w) as one EncodedBatch."""
    encoded = [(i, item) for i, item in enumerate(items) if isinstance(item, EncodedCrop)]
    made = [(i, item) for i, item in enumerate(items) if not isinstance(item, EncodedCrop)]
    pixels = torch.stack([image for _, image in made]) if made else torch.empty((0, 3, 0, 0), dtype=torch.uint8)
    return EncodedBatch(
        data=torch.cat([item.data for _, item in encoded]),
        ends=torch.tensor([len(item.data) for _, item in encoded]).cumsum(0),
        boxes=torch.stack([item.box for _, item in encoded]),
        at=torch.tensor([i for i, _ in encoded], dtype=torch.long),
        pixels=pixels,
        pixels_at=torch.tensor([i for i, _ in made], dtype=torch.long),
    )
