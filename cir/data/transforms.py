"""open_clip's training augmentation with uint8 images out of the loader, normalised per batch on the device.

On 256 px JPEG photos open_clip's train transform (RandomResizedCrop in PIL,
ToTensor, Normalize) costs about 4x the JPEG decode per sample (benchmarks/README.md,
bench_decode_floor.py): PIL's bicubic resample, and float32 images four times the
bytes of uint8 through collation, worker-to-main transfer and host-to-device copies.
`Uint8RandomResizedCrop` makes the same crop (same random parameters, drawn the
same way from torch's RNG, which the loader seeds per sample: cir.data.sample_rng) and resamples it with torch's antialiased uint8 kernel
(the same bicubic filter as PIL's, about 4x faster); the loader hands over uint8
batches, and `to_float` does ToTensor + Normalize once per batch where the batch
is (the DataModule's on_after_batch_transfer, NormaliseOnDevice: on the GPU in training).

It is built from the transform open_clip itself makes from the model's
PreprocessCfg and AugmentationCfg (`uint8_version`), so it stays what
`model.aug_cfg` asks for; augmentations it does not cover (colour jitter,
grayscale, timm's pipeline) keep open_clip's float transform.

JPEGs decode through TorchCodec (the PyTorch ecosystem's decoder, which superseded
torchvision's image decoding); with `decode="cuda"` the transform draws the crop box
from the JPEG header alone and hands over the bytes, which cir.data.device_decode
decodes, crops and resizes per batch on the GPU.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from lightning_utilities.core.apply_func import apply_to_collection
from PIL import Image
from torchcodec.decoders import decode_jpeg
from torchvision.transforms import (
    Compose,
    InterpolationMode,
    Normalize,
    RandomResizedCrop,
)

from cir.data.device_decode import EncodedBatch, EncodedCrop, stack_encoded
from cir.data.images import load_rgb
from cir.data.shared_batch import stack as shared_stack

# What open_clip's plain (non-timm, no jitter) training transform is made of, in order.
_PLAIN_OPEN_CLIP = ("RandomResizedCrop", "MaybeConvertMode", "MaybeToTensor", "Normalize")
_MODES = {InterpolationMode.BICUBIC: "bicubic", InterpolationMode.BILINEAR: "bilinear"}
# The antialiased kernels F.interpolate calls for these modes (torch/nn/functional.py), here for their out= variants.
_AA_KERNELS = {"bicubic": torch._C._nn._upsample_bicubic2d_aa, "bilinear": torch._C._nn._upsample_bilinear2d_aa}
JPEG_MAGIC = b"\xff\xd8"
log = logging.getLogger(__name__)
# Images this process decoded through PIL instead of TorchCodec, per format and mode (the first of each is logged).
PIL_DECODES: Counter[str] = Counter()
# The formats run.json counts them by (modes summed; the shard loader's batches carry them out of the workers).
PIL_FORMATS = ("JPEG", "PNG", "WEBP", "other")


class Header(NamedTuple):
    """What PIL reads from an image's header without decoding it."""

    width: int
    height: int
    rgb_jpeg: bool  # a baseline RGB JPEG, the one format TorchCodec decodes here (CPU and CUDA alike)


def read_header(data: bytes) -> Header:
    """The header of a JPEG; a decompression bomb (load_rgb's limit) is refused before any decoding."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused just below, with the same limit as load_rgb
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
            rgb_jpeg = header.format == "JPEG" and header.mode == "RGB"
    if width * height > Image.MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(f"image of {width}x{height} pixels exceeds the limit of {Image.MAX_IMAGE_PIXELS}")
    return Header(width, height, rgb_jpeg)


def decode_rgb(data: bytes) -> torch.Tensor:
    """Encoded image -> uint8 (3, H, W) RGB, the pixels load_rgb gives (channels-last memory).

    Baseline RGB JPEGs (what img2dataset writes) go through TorchCodec's JPEG
    decoder (libjpeg-turbo) straight into a tensor, once PIL has read the header;
    anything else (grayscale or CMYK JPEG, PNG, WebP, ...) through load_rgb, counted in PIL_DECODES.
    """
    if data[:2] == JPEG_MAGIC and read_header(data).rgb_jpeg:
        return decode_jpeg(data)
    return pil_decode(data)


def pil_decode(data: bytes) -> torch.Tensor:
    """load_rgb's pixels as uint8 (3, H, W), counted per format in PIL_DECODES (the first of a format logged)."""
    image = load_rgb(io.BytesIO(data))
    with Image.open(io.BytesIO(data)) as header:  # load_rgb's converted image has forgotten its format and mode
        name = f"{header.format} {header.mode}"
    PIL_DECODES[name] += 1
    if PIL_DECODES[name] == 1:
        log.info("%s images decode through PIL (TorchCodec here decodes baseline RGB JPEGs); counted in PIL_DECODES", name)
    return pil_to_uint8(image)


def pil_decode_counts() -> torch.Tensor:
    """PIL_DECODES so far as LongTensor[len(PIL_FORMATS)]: per format, modes summed, any other format as "other"."""
    counts = dict.fromkeys(PIL_FORMATS, 0)
    for name, n in PIL_DECODES.items():
        image_format = name.split(" ", 1)[0]
        counts[image_format if image_format in counts else "other"] += n
    return torch.tensor(list(counts.values()), dtype=torch.long)


def pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 (3, H, W) view of its pixels in channels-last memory."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


@dataclass(frozen=True)
class Uint8RandomResizedCrop:
    """torchvision's RandomResizedCrop (as open_clip configures it), as a uint8 (3, *size) tensor.

    Takes a PIL image or the encoded bytes (`takes_encoded`: cir's shard reader
    then skips the PIL decode). The crop parameters come from
    RandomResizedCrop.get_params, the same draws from torch's RNG as open_clip's
    transform (and nothing from Python's `random`: `draws_from_python`); given `out` (a uint8 (3, *size) view
    in channels-last memory, `fills_out`), the crop is resized straight into it (a batch made in place); with
    `decode="cuda"` an RGB JPEG comes out as an EncodedCrop (its bytes and the box drawn
    from its header size, the same draws), for cir.data.device_decode; the resample is torch's antialiased `interpolate` on uint8, the
    filter PIL uses (pixels equal to within one grey level, bar about one value in
    a million that differs by two: the two round their intermediate pass differently).
    `mean` / `std` are what `to_float` applies per batch.
    """

    size: tuple[int, int]
    scale: tuple[float, float]
    ratio: tuple[float, float]
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    decode: str = "cpu"
    takes_encoded = True
    draws_from_python = False

    @property
    def fills_out(self) -> bool:
        """Whether __call__ takes `out` (on the CPU path, not when it ships JPEG bytes for the device)."""
        return self.decode == "cpu"

    def __call__(self, image: Image.Image | bytes, out: torch.Tensor | None = None) -> torch.Tensor | EncodedCrop:
        if isinstance(image, Image.Image):
            return self.resized_crop(pil_to_uint8(image.convert("RGB")), out)
        if self.decode == "cuda" and image[:2] == JPEG_MAGIC:
            header = read_header(image)
            if header.rgb_jpeg:
                return EncodedCrop(torch.frombuffer(bytearray(image), dtype=torch.uint8),
                                   torch.tensor(self.crop_box(header.height, header.width)))
        return self.resized_crop(decode_rgb(image), out)

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the random crop of an image of this size: RandomResizedCrop.get_params's
        draws, which read the image's size only (here a zero-stride stand-in of that shape)."""
        stand_in = torch.empty(()).expand(3, height, width)
        return tuple(RandomResizedCrop.get_params(stand_in, list(self.scale), list(self.ratio)))

    def resized_crop(self, pixels: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (3, H, W) -> a random crop resized to `size`, uint8 in channels-last memory (into `out` if given)."""
        top, left, height, width = self.crop_box(pixels.shape[-2], pixels.shape[-1])
        return self.resize(pixels[:, top : top + height, left : left + width], out)

    def resize(self, crop: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (3, h, w) -> uint8 (3, *size). On the CPU torch's uint8 kernel (channels-last memory selects its
        vectorised version), into `out` if given (F.interpolate's kernel, which has no out= of its own); elsewhere
        (CUDA has no uint8 antialiased kernel) in float32, rounded back to uint8."""
        if crop.device.type == "cpu":
            crop = crop[None].contiguous(memory_format=torch.channels_last)
            if out is not None:
                _AA_KERNELS[self.interpolation](crop, self.size, False, out=out[None])
                return out
            return F.interpolate(crop, size=self.size, mode=self.interpolation, antialias=True)[0]
        resized = F.interpolate(crop[None].float(), size=self.size, mode=self.interpolation, antialias=True)[0]
        return resized.round_().clamp_(0, 255).to(torch.uint8)

    def to_float(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> what open_clip's transform gives: ToTensor's /255, then Normalize (same ops, same order)."""
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        return images.float().div_(255).sub_(mean).div_(std)


def uint8_version(transform: Callable) -> Uint8RandomResizedCrop | None:
    """The uint8 equivalent of open_clip's plain training transform, or None for any other transform.

    Reads the crop size, scale, ratio and interpolation from open_clip's own
    RandomResizedCrop, and mean / std from its Normalize.
    """
    if not isinstance(transform, Compose) or tuple(type(t).__name__ for t in transform.transforms) != _PLAIN_OPEN_CLIP:
        return None
    crop, _, _, normalize = transform.transforms
    if not isinstance(crop, RandomResizedCrop) or not isinstance(normalize, Normalize) or crop.interpolation not in _MODES:
        return None
    if not crop.antialias:
        return None
    return Uint8RandomResizedCrop(size=tuple(crop.size), scale=tuple(crop.scale), ratio=tuple(crop.ratio),
                                  interpolation=_MODES[crop.interpolation], mean=tuple(normalize.mean),
                                  std=tuple(normalize.std))


def stack_images(images: Sequence[torch.Tensor], *, pooled: bool = False) -> torch.Tensor:
    """One batch tensor, as torch's default_collate stacks it: in a DataLoader worker straight into shared memory
    (else the batch is copied there again on its way to the main process), with `pooled` into a segment the worker
    reuses (cir.data.shared_batch, which says what that asks of the batch's container). Channels-last uint8 images
    stay channels-last: one contiguous copy instead of a strided gather. EncodedCrops (decode="cuda") become one
    EncodedBatch."""
    if any(isinstance(image, EncodedCrop) for image in images):
        return stack_encoded(images)
    first = images[0]
    if first.dtype == torch.uint8 and first.ndim == 3 and first.stride(0) == 1:
        return shared_stack([image.permute(1, 2, 0) for image in images], pooled=pooled).permute(0, 3, 1, 2)
    return shared_stack(images, pooled=pooled)


class NormaliseOnDevice:
    """LightningDataModule mixin: a batch of uint8 images (from a Uint8RandomResizedCrop training transform) becomes
    open_clip's normalised floats once it is on the device, once per batch; everything else passes through.
    An EncodedBatch (decode="cuda") is first decoded, cropped and resized on the device, before the transfer.

    Lightning calls the DataModule's on_after_batch_transfer for every batch it moves, since the DataModule owns
    the data (and the transform that knows the normalisation); validation batches are floats already.
    """

    image_transform: Callable

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images = getattr(batch, "images", None)
        if not isinstance(images, EncodedBatch):
            return batch
        return batch._replace(images=images.decode(self.image_transform, self.trainer.strategy.root_device))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        crop = self.image_transform
        if not isinstance(crop, Uint8RandomResizedCrop):
            return batch
        return apply_to_collection(batch, torch.Tensor, lambda t: crop.to_float(t) if t.dtype == torch.uint8 and t.ndim == 4 else t)
